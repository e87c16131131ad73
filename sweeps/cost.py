"""What a sweep costs, from recorded step times (``emorl sweep SPEC --dry-run``).

Nothing here is invented: a trial's time is the sum, over the stretches of its training where the
refinement steps I are constant (the curriculum: :func:`emorl.engine.schedule.refine_steps_at`),
of steps x the median step time that ``emorl bench step`` recorded for that setting, batch size,
I and mode on the machine (:mod:`emorl.bench.records`). A trial with a stretch that has no record
gets no estimate, and the output names the ``emorl bench step`` command that would record it.

What the estimate leaves out: evaluations (every ``trainer.eval_every`` steps), checkpoints,
data loading and start-up. A trial whose model differs from the benchmarked one only in switches
(prior, DualGRU, ...) is estimated from the benchmark and marked ``~``; one that differs in size
(image size, K, D, L, decoder, likelihood) or is not EfficientMORL is not estimated. The wall
time schedules the trials in order on as many slots as run at once, each as fast as alone (on a
GPU shared by several trials that is what was measured on an H200 for the paper's settings;
docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import heapq
import os
from dataclasses import dataclass, field

from emorl.engine.schedule import refine_steps_at
from sweeps import status
from sweeps.spec import Plan, SweepSpec, Trial

SIZE_KEYS = ("image_size", "in_channels", "num_slots", "latent_dim", "stochastic_layers", "encoder_channels",
             "decoder", "likelihood")
GRAPH_MODES = {"fp32": "graph", "tf32": "graph-tf32", "bf16": "graph-bf16"}


@dataclass(frozen=True)
class Stretch:
    """``steps`` training steps at ``refine_steps`` (I) refinement steps."""

    refine_steps: int
    steps: int


def stretches(config: dict, start: int = 0) -> list[Stretch]:
    """The training steps from ``start`` to ``trainer.max_steps``, split where I changes."""
    curriculum, end = config["curriculum"], int(config["trainer"]["max_steps"])
    milestones = curriculum.get("milestones") or []
    points = sorted({start, end, *(int(m) for m in milestones if start < int(m) < end)})
    found = []
    for first, stop in zip(points, points[1:]):
        steps = refine_steps_at(first, curriculum["refine_steps"], milestones, curriculum.get("milestone_refine_steps")
                                or [])
        if found and found[-1].refine_steps == steps:
            found[-1] = Stretch(steps, found[-1].steps + stop - first)
        else:
            found.append(Stretch(steps, stop - first))
    return found


def bench_setting(config: dict) -> tuple[str | None, list[str], str]:
    """(the ``emorl bench step`` setting that times this trial's model, the model switches that differ
    from it, why there is none)."""
    from emorl.bench.step import SETTINGS
    from emorl.models.emorl import EMORLConfig

    model = config["model"]
    if model.get("name", "efficient_morl") != "efficient_morl":
        return None, [], f"emorl bench step times EfficientMORL only (this trial: {model.get('name')})"
    setting = config["data"]["name"]
    if setting not in SETTINGS:
        return None, [], f"emorl bench step has no setting for data {setting!r} ({', '.join(SETTINGS)})"
    benched = dataclasses.asdict(EMORLConfig(**SETTINGS[setting][0]))
    differs = [f"{key}={model[key]}" for key, value in benched.items()
               if key != "refine_steps" and key in model and model[key] != value]
    size = [d for d in differs if d.split("=")[0] in SIZE_KEYS]
    if size:
        return None, [], f"the model differs in size from the benchmarked {setting} ({', '.join(size)})"
    return setting, differs, ""


def bench_mode(trainer: dict, device: str) -> str:
    """The ``emorl bench step`` mode that runs the step as this trainer config does."""
    precision = trainer.get("precision", "fp32")
    if device == "cuda" and trainer.get("cuda_graph", True):
        return GRAPH_MODES[precision]
    if precision == "fp32":
        return "fast" if trainer.get("channels_last", True) else "fast-nchw"
    return f"fast-{precision}"


@dataclass
class TrialCost:
    """One trial's estimate: seconds per step by I, what is missing, and the machine used."""

    trial: Trial
    device: str
    threads: int
    setting: str | None
    mode: str
    batch: int
    total: list[Stretch]
    remaining: list[Stretch]
    seconds_per_step: dict[int, float] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)  # I without a record
    approximate: list[str] = field(default_factory=list)  # model switches that differ from the benchmark
    why: str = ""  # no estimate possible at all
    machine: str = ""  # the recorded machine the step times come from
    no_machine: str = ""  # why no recorded machine fits

    def seconds(self, which: list[Stretch]) -> float | None:
        if self.why or self.missing:
            return None
        return sum(s.steps * self.seconds_per_step[s.refine_steps] for s in which)

    @property
    def total_s(self) -> float | None:
        return self.seconds(self.total)

    @property
    def remaining_s(self) -> float | None:
        return self.seconds(self.remaining)

    def bench_command(self) -> str:
        settings = " ".join(f"{self.setting}:{i}" for i in self.missing)
        command = (f"emorl bench step --settings {settings} --modes {self.mode} --batch-size {self.batch} "
                   f"--device {self.device}")
        return command + (f" --threads {self.threads}" if self.device == "cpu" else "")



def _machines(data: dict, device: str, threads: int, cost_from: str | None) -> tuple[list, str]:
    """The recorded machines to take a trial's step times from, or why there are none."""
    from emorl.bench import records

    if cost_from:
        found = records.find_machines(data, device, text=cost_from)
        found = [(k, e) for k, e in found if device != "cpu" or e["machine"].get("threads") == threads]
        where = f"a machine matching {cost_from!r}" + (f" with {threads} threads" if device == "cpu" else "")
        return found, "" if found else f"no {device} records on {where}"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return [], "no GPU here: name a machine with recorded GPU step times, e.g. --cost-from H200"
    here = records.machine(device, threads=threads)
    found = records.find_machines(data, device, described=here)
    return found, "" if found else f"no records on this machine ({records.machine_key(here)})"


def trial_costs(plan: Plan, data: dict, cost_from: str | None = None) -> list[TrialCost]:
    """The estimate of every training trial of ``plan`` from the records ``data``."""
    from emorl.bench.records import setting_key

    costs = []
    for trial in plan.trials:
        if trial.kind != "train":
            continue
        config = trial.config
        device = config["trainer"]["device"]
        threads = int(config["trainer"].get("num_threads") or trial.resources.threads)
        done = int(status.read_status(trial.output_dir).get("step") or 0)
        setting, differs, why = bench_setting(config)
        cost = TrialCost(trial, device, threads, setting, bench_mode(config["trainer"], device),
                         int(config["data"]["batch_size"]), stretches(config),
                         stretches(config, min(done, trial.max_steps)), approximate=differs, why=why)
        if not why:
            machines, cost.no_machine = _machines(data, device, threads, cost_from)
            cost.machine, entry = machines[0] if machines else ("", {"steps": {}})
            for refine_steps in sorted({s.refine_steps for s in cost.total}):
                found = entry["steps"].get(setting_key(setting, cost.batch, refine_steps, cost.mode))
                if found is None:
                    cost.missing.append(refine_steps)
                else:
                    cost.seconds_per_step[refine_steps] = float(found["step_s"])
        costs.append(cost)
    return costs


def finish_times(durations: list[float], slots: int, busy: list[float] = ()) -> list[float]:
    """When each of ``durations`` ends (seconds from now) when run in order on ``slots`` slots, the
    first slots busy for ``busy`` seconds (trials already running): each starts on the slot free first."""
    free = sorted(list(busy)[:slots] + [0.0] * max(0, slots - len(busy)))
    heapq.heapify(free)
    ends = []
    for duration in durations:
        start = heapq.heappop(free)
        ends.append(start + duration)
        heapq.heappush(free, start + duration)
    return ends


def concurrency(spec: SweepSpec, slots: int | None = None, cpus: int | None = None) -> tuple[int, str]:
    """How many trials run at once: ``slots`` if given, else the spec's max_concurrent, else what fits
    this machine (``cpus`` CPUs, or all); with a note of where the number comes from."""
    if slots:
        return slots, "as given"
    if spec.max_concurrent:
        return spec.max_concurrent, "max_concurrent"
    cpus = cpus or os.cpu_count() or 1
    fit = int(cpus // spec.resources.cpus)
    note = f"what fits {cpus} CPUs here"
    if spec.resources.gpus > 0:
        import torch

        gpus = torch.cuda.device_count()
        note += f" and {gpus or 1} GPU{'s' if gpus > 1 else ''}" + ("" if gpus else " (assumed: none here)")
        fit = min(fit, int((gpus or 1) // spec.resources.gpus)) if gpus else int(1 // spec.resources.gpus)
    return max(1, fit), note


def hours(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f} days"


def choose_hint(note: str, flag: str) -> str:
    """Where the number of trials at once was a guess from this machine: how to choose it."""
    return f"; {flag} N to choose" if note.startswith("what fits") else ""


def _group(trial: Trial) -> str:
    return trial.id.rsplit("/seed", 1)[0] if trial.seed is not None else trial.id


def format_cost(plan: Plan, costs: list[TrialCost], slots: int, slots_note: str) -> str:
    """The estimate as text: per group of trials (all but the seed), then the totals and what is missing."""
    if not costs:
        return "cost: an evaluation sweep; no training steps to estimate"
    lines = ["cost (training steps only, from `emorl bench step` records; evaluations, checkpoints and start-up "
             "not included):"]
    groups: dict[str, list[TrialCost]] = {}
    for cost in costs:
        groups.setdefault(_group(cost.trial), []).append(cost)
    for machine in sorted({c.machine for c in costs if c.machine}):
        lines.append(f"  machine: {machine}")
    for problem in sorted({c.no_machine for c in costs if c.no_machine}):
        lines.append(f"  {problem}")
    for name, members in groups.items():
        first = members[0]
        head = f"  {name} x{len(members)}: "
        if first.why:
            lines.append(head + f"no estimate: {first.why}")
            continue
        parts = [f"{s.steps} steps at I={s.refine_steps}" for s in first.total]
        if first.missing:
            lines.append(head + ", ".join(parts) + f"; no record for I={','.join(map(str, first.missing))} "
                         f"({first.setting}, batch {first.batch}, {first.mode})")
            continue
        rates = ", ".join(f"{first.seconds_per_step[s.refine_steps]:.4g} s/step at I={s.refine_steps}"
                          for s in first.total)
        mark = f" ~ (model differs from the benchmark: {', '.join(first.approximate)})" if first.approximate else ""
        lines.append(head + ", ".join(parts) + f"; {rates}; {hours(first.total_s)} per trial{mark}")
    known = [c for c in costs if c.total_s is not None]
    unknown = len(costs) - len(known)
    resources = plan.spec.resources
    if known:
        total = sum(c.total_s for c in known)
        remaining = [c.remaining_s for c in known]
        device_hours = f"{total * resources.cpus / 3600:.1f} CPU-hours ({resources.cpus:g} CPU per trial)"
        if resources.gpus > 0:
            device_hours += f", {total * resources.gpus / 3600:.1f} GPU-hours ({resources.gpus:g} GPU per trial)"
        wall = max(finish_times([c.total_s for c in known], slots))
        left = [r for r in remaining if r > 0]
        lines.append(f"  total of {len(known)} trials: {total / 3600:.1f} trial-hours = {device_hours}; wall time "
                     f"{hours(wall)} at {slots} at once ({slots_note}{choose_hint(slots_note, '--cost-slots')})")
        if len(left) < len(known) or sum(remaining) < total:
            wall_left = max(finish_times(left, slots), default=0.0)
            lines.append(f"  still to run (from the trials' recorded steps): {sum(remaining) / 3600:.1f} trial-hours, "
                         f"wall time {hours(wall_left)}")
    if unknown:
        lines.append(f"  no estimate for {unknown} of {len(costs)} trials" + (" (not in the totals)" if known else ""))
    commands = sorted({c.bench_command() for c in costs if c.missing})
    if commands:
        lines.append("  record the missing step times on the machine that will run the sweep with:")
        lines += [f"    {command}" for command in commands]
    return "\n".join(lines)


def estimate_text(plan: Plan, cost_from: str | None = None, slots: int | None = None, cpus: int | None = None,
                  records_path=None) -> str:
    """The cost of ``plan`` as :func:`format_cost` writes it, from the records at ``records_path``."""
    from emorl.bench import records

    costs = trial_costs(plan, records.load(records_path), cost_from)
    count, note = concurrency(plan.spec, slots, cpus)
    return format_cost(plan, costs, count, note)

