"""``emorl sweep SPEC [overrides ...]``: expand a sweep spec, show its trials, run them with Ray Tune.

``emorl sweep SPEC --dry-run`` also prints the cost from recorded step times (:mod:`sweeps.cost`);
``emorl sweep status NAME`` the progress and ETA of a sweep from its folder (:mod:`sweeps.progress`).

Found by the core CLI through the ``emorl.commands`` entry point (``sweeps.cli:register``).
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from emorl.errors import ConfigError

STATUS = "status"  # `emorl sweep status NAME`: not a spec name

# Flags that shape a launch, in the order they are written back into a retry command.
_REPEATED_FLAGS = ("address", "output", "tracking_uri", "storage", "source_output", "cpus", "gpus",
                   "max_concurrent", "max_failures", "num_cpus", "ray_temp_dir", "target_ci", "max_seeds")


class _OverridesAnywhere(argparse.ArgumentParser):
    """Lets overrides and flags come in any order (``SPEC --dry-run key=value``): plain argparse stops
    collecting positionals at the first flag. The guard keeps argparse's own inner calls plain."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_intermixing", False):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def register(subparsers) -> None:
    from sweeps.spec import shipped_specs

    parser = subparsers.add_parser(
        "sweep", help="run a grid of seeds and ablations with Ray Tune, every trial tracked in MLflow",
        description="Expand a sweep spec into trials, print them, and run them as Ray Tune trials around the "
                    "trainer, locally or on a Ray cluster (--address). Running the same command again resumes: "
                    "finished trials are skipped, the others continue from their checkpoints. See docs/sweeps.md.",
    )
    parser.__class__ = _OverridesAnywhere  # subparsers build plain ArgumentParsers
    parser.add_argument("spec", help=f"a shipped spec ({', '.join(shipped_specs())}) or the path of a YAML spec; "
                                     f"or `{STATUS} NAME`: the progress and ETA of a running or interrupted sweep")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every trial, e.g. trainer.max_steps=1000")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the trials (their steps and state) and the cost estimate from recorded step "
                             "times, check the resources (this machine, or the cluster of --address), then stop")
    parser.add_argument("--cost-from", metavar="MACHINE",
                        help="--dry-run: estimate from the step times recorded on a machine whose description holds "
                             "this text (e.g. H200; see <output root>/bench/step-times.json); default: this machine")
    parser.add_argument("--cost-slots", type=int, metavar="N",
                        help="--dry-run: trials at once for the wall time (default: max_concurrent, or what fits here)")
    parser.add_argument("--address", help="join this Ray cluster (host:port, or auto); default: start Ray here")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", dest="restart", action="store_false",
                      help="continue the sweep where it stopped (the default)")
    mode.add_argument("--restart", dest="restart", action="store_true",
                      help="start over: move the sweep folder aside and start a new MLflow parent run")
    parser.add_argument("--only", help="comma-separated patterns of the trial ids to run, e.g. 'clevr6/*/seed0'")
    parser.add_argument("--max-concurrent", type=int, help="at most this many trials at once (spec: max_concurrent)")
    parser.add_argument("--max-failures", type=int, help="retries of a failed trial (spec: max_failures)")
    parser.add_argument("--cpus", type=float, help="CPUs per trial, also its torch threads (spec: resources.cpus)")
    parser.add_argument("--gpus", type=float, help="GPU share per trial; 0.25 packs four trials on one GPU "
                                                   "(spec: resources.gpus)")
    parser.add_argument("--output", help="the sweep's folder (default: the spec's output, or "
                                         "<output root>/sweeps/<name>)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: the spec's, or sqlite under the output root)")
    parser.add_argument("--storage", help="Ray Tune's storage (default <output>/tune); on a cluster a folder all "
                                          "nodes share, or s3://...")
    parser.add_argument("--source-output", help="evaluation sweeps: the folder of the training sweep evaluated")
    parser.add_argument("--num-cpus", type=int, help="local Ray only: CPUs it may use (default: all)")
    parser.add_argument("--ray-temp-dir", help="local Ray only: its temporary folder (default: Ray's)")
    parser.add_argument("--no-data-prep", dest="prepare_data", action="store_false",
                        help="do not generate missing data sets in the driver (each node has its own)")
    parser.add_argument("--quiet", action="store_true", help="no Tune progress tables")
    parser.add_argument("--target-ci", type=float, metavar="W",
                        help="adaptive seeds: more seeds for a setting while the 95%% CI half-width of its metric "
                             "(spec: adaptive.metric, default test/fg_ari) is above W (spec: adaptive.target_ci)")
    parser.add_argument("--max-seeds", type=int, metavar="N",
                        help="adaptive seeds: at most N seeds per setting, failed ones included "
                             "(spec: adaptive.max_seeds)")
    parser.set_defaults(func=_sweep, restart=False)


def _status(args: argparse.Namespace) -> int:
    """``emorl sweep status NAME``: per-trial progress and the ETA, read from the sweep folder."""
    from sweeps.progress import status_text

    if len(args.overrides) != 1:
        raise ConfigError("usage: emorl sweep status NAME, where NAME is a sweep's name, its spec or its folder "
                          "(--output DIR as launched; --max-concurrent N for the ETA)")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent={args.max_concurrent} must be >= 1")
    print(status_text(args.overrides[0], args.output, args.max_concurrent))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from sweeps.launch import LaunchOptions, run_sweep
    from sweeps.spec import expand, load_spec, parse_resources, with_settings

    if args.spec == STATUS:
        return _status(args)
    spec = load_spec(args.spec)
    for flag, value, minimum in (("--max-concurrent", args.max_concurrent, 1), ("--max-failures", args.max_failures, 0),
                                 ("--num-cpus", args.num_cpus, 1), ("--cost-slots", args.cost_slots, 1)):
        if value is not None and value < minimum:
            raise ConfigError(f"{flag}={value} must be >= {minimum}")
    resources = None
    if args.cpus is not None or args.gpus is not None:
        resources = parse_resources({"cpus": spec.resources.cpus, "gpus": spec.resources.gpus}, cpus=args.cpus,
                                    gpus=args.gpus)
    spec = with_settings(spec, resources=resources, max_concurrent=args.max_concurrent,
                         max_failures=args.max_failures)
    only = [p.strip() for p in args.only.split(",") if p.strip()] if args.only else None
    spec = _adaptive_settings(spec, args, only)
    plan = expand(spec, args.overrides, output=args.output, tracking_uri=args.tracking_uri,
                  source_output=args.source_output, only=only)
    if spec.adaptive is not None and not args.restart:  # show the seeds decided so far
        from sweeps.adaptive import recorded_seeds, resume_plan

        resume_plan(plan, recorded_seeds(plan.output_dir))
    print(format_plan(plan))
    if args.dry_run:
        from sweeps.cost import estimate_text
        from sweeps.launch import check_resources

        try:  # the launch's resource check: a trial that does not fit fails the dry run, after the cost
            fits = check_resources(plan, LaunchOptions(address=args.address, num_cpus=args.num_cpus,
                                                       ray_temp_dir=args.ray_temp_dir))
        finally:
            print(estimate_text(plan, args.cost_from, args.cost_slots, args.num_cpus))
        print(fits)
        return 0
    storage = args.storage
    if storage and "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    options = LaunchOptions(address=args.address, num_cpus=args.num_cpus, storage=storage, restart=args.restart,
                            prepare_data=args.prepare_data, ray_temp_dir=args.ray_temp_dir,
                            verbose=0 if args.quiet else 1)
    outcome = run_sweep(plan, options)
    failed = [o.trial.id for o in outcome.having("failed")]
    print(format_summary(outcome, command(args), command(args, only=failed) if failed else None))
    return outcome.exit_code


def _adaptive_settings(spec, args: argparse.Namespace, only: list[str] | None):
    """The spec with --target-ci / --max-seeds applied; fixed seeds under --only (a selection of
    trials, which the rule's additions would not match)."""
    import dataclasses

    from sweeps.adaptive import DEFAULT_METRIC, make_rule

    rule = spec.adaptive
    if args.target_ci is not None or args.max_seeds is not None:
        if spec.kind != "training":
            raise ConfigError("--target-ci and --max-seeds apply to training sweeps only")
        if rule is None and (args.target_ci is None or args.max_seeds is None):
            raise ConfigError(f"{spec.path} has no `adaptive:` rule: give both --target-ci W and --max-seeds N")
        rule = make_rule(args.target_ci if args.target_ci is not None else rule.target_ci,
                         args.max_seeds if args.max_seeds is not None else rule.max_seeds,
                         rule.metric if rule else DEFAULT_METRIC, spec.seeds, "--target-ci/--max-seeds")
    if rule is not None and only:
        print("note: --only runs exactly the selected trials; adaptive seeds are decided by the command without --only")
        rule = None
    return dataclasses.replace(spec, adaptive=rule)


def format_plan(plan) -> str:
    """The trials of a plan as a table, with what is known of each from its folder."""
    from sweeps.launch import trial_state

    spec = plan.spec
    if spec.kind == "training":
        factors = [f"{len(spec.experiments)} experiment{'s' if len(spec.experiments) > 1 else ''}"
                   + (f" (+ {len(spec.optional_experiments)} optional)" if spec.optional_experiments else "")]
        if spec.variants:
            factors.append(f"{len(spec.variants)} variants")
        factors += [f"{len(a.values)} values of {a.label}" for a in spec.axes]
        factors.append(f"{len(spec.seeds)} seeds")
        grid = " x ".join(factors)
    else:
        evaluation = spec.evaluation
        steps = list(evaluation.refine_steps) if evaluation.refine_steps else "the setting's"
        grid = (f"checkpoints x {len(evaluation.sets)} sets, test-time I {steps}, metrics "
                f"{', '.join(evaluation.metrics)}")
    resources = spec.resources
    threads = f"{resources.threads} torch thread{'s' if resources.threads > 1 else ''}"
    lines = [
        f"sweep {spec.name} ({spec.kind}, {spec.path}): {len(plan.trials)} trials"
        + (f" of {plan.total}" if plan.total != len(plan.trials) else "") + f" ({grid})",
        f"  per trial: {resources.cpus:g} CPU ({threads}), {resources.gpus:g} GPU; "
        f"at most {spec.max_concurrent or 'as many as fit'} at once; up to {spec.max_failures} retries",
        f"  output:   {plan.output_dir}",
        f"  tracking: {plan.tracking_uri}, experiment {plan.tracking_experiment!r}",
    ]
    if plan.overrides:
        lines.append(f"  overrides for every trial: {' '.join(plan.overrides)}")
    if spec.adaptive is not None:
        settings = len({t.id.rsplit("/", 1)[0] for t in plan.trials})
        lines.append(f"  {spec.adaptive.describe(len(spec.seeds))}: {len(plan.trials)} trials decided so far, "
                     f"at most {settings * spec.adaptive.max_seeds}")
    if plan.optional and not any(t.config["name"] in spec.optional_experiments for t in plan.trials):
        names = ", ".join(spec.optional_experiments)
        lines.append(f"  optional: {plan.optional} more trials ({names}), run only when --only selects them, "
                     f"e.g. --only '{spec.optional_experiments[0]}/*'")
    rows = [("#", "trial", "steps", "overrides", "state")]
    for index, trial in enumerate(plan.trials, 1):
        state, detail = trial_state(trial)
        rows.append((str(index), trial.id, str(trial.max_steps or "-"), " ".join(trial.overrides) or "-",
                     f"{state} {detail}".strip()))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    return "\n".join(lines)


def format_summary(outcome, again: str, retry: str | None) -> str:
    """What happened, what failed and how to retry it, and where the results are."""
    from emorl.tracking import browse_command

    plan = outcome.plan
    finished, failed, unfinished = (outcome.having(s) for s in ("finished", "failed", "unfinished"))
    now = sum(1 for o in finished if o.ran_now)
    selected = f" (selected by --only, of {plan.total})" if plan.total != len(plan.trials) else ""
    undelivered = f", {outcome.undelivered} tracking records undelivered" if outcome.undelivered else ""
    lines = ["", f"sweep {plan.spec.name}: {len(finished)} of {len(plan.trials)} trials{selected} finished ({now} in "
                 f"this launch), {len(failed)} failed, {len(unfinished)} unfinished{undelivered}; "
                 f"{outcome.wall_s:.0f} s"]
    if failed:
        lines.append("failed trials:")
        lines += [f"  {o.trial.id} ({o.attempts} attempt{'s' if o.attempts != 1 else ''}): {o.detail}" for o in failed]
        lines += ["retry them with:", f"  {retry}",
                  "(running the same command again also retries them; finished trials are skipped)"]
    if unfinished:
        lines += [f"interrupted: {len(unfinished)} trials unfinished; resume with the same command:", f"  {again}"]
    if plan.spec.adaptive is not None:
        from sweeps.adaptive import decisions

        lines.append(f"{plan.spec.adaptive.describe(len(plan.spec.seeds))}:")
        lines += [f"  {decision.line(plan.spec.adaptive)}" for decision in decisions(plan)]
    lines += format_delivery(outcome, again)
    lines += ["results:", f"  output folder: {plan.output_dir}"]
    if outcome.parent_run_id:
        lines += [f"  MLflow:        {plan.tracking_uri}, experiment {plan.tracking_experiment!r}, "
                  f"parent run {outcome.parent_run_id}",
                  f"  browse with:   {browse_command(plan.tracking_uri, plan.tracking_experiment)}",
                  f"  report with:   {report_command(plan)}"]
    return "\n".join(lines)


def report_command(plan) -> str:
    """The command that builds this sweep's report (tables, figures) from its tracked runs."""
    from emorl.config import default_tracking_uri

    store = "" if plan.tracking_uri == default_tracking_uri() else f" --tracking-uri {shlex.quote(plan.tracking_uri)}"
    return f"emorl report --sweep {shlex.quote(plan.spec.name)}{store}"


def format_delivery(outcome, again: str) -> list[str]:
    """What the driver delivered from the trials' spools, and what is still undelivered with the
    commands that deliver it (a sweep never ends quietly with tracking records left behind)."""
    plan, lines = outcome.plan, []
    ended = [o for o in outcome.outcomes if o.run_ended]
    if ended:
        lines.append(f"tracking: ended the MLflow runs of {len(ended)} trials whose processes were stopped: "
                     + ", ".join(f"{o.trial.id} ({o.run_ended})" for o in ended))
    # records kept from before: those delivered, less the end record the driver has just written and delivered
    kept = {o.trial.id: o.delivered - (1 if o.run_ended and not o.undelivered else 0) for o in outcome.outcomes}
    delivered = [o for o in outcome.outcomes if kept[o.trial.id]]
    if delivered:
        lines.append(f"tracking: delivered {sum(kept[o.trial.id] for o in delivered)} records kept in the spools of "
                     f"{len(delivered)} trials: " + ", ".join(f"{o.trial.id} ({kept[o.trial.id]})" for o in delivered))
    waiting = [o for o in outcome.outcomes if o.undelivered]
    if waiting:
        failure = next((o.delivery_failure for o in waiting if o.delivery_failure), None)
        lines.append(f"tracking: {outcome.undelivered} records of {len(waiting)} trials are NOT delivered to "
                     f"{plan.tracking_uri}" + (f" ({short_failure(failure)})" if failure else "") + ":")
        lines += [f"  {o.trial.id}: {o.undelivered}" for o in waiting]
        lines += ["they wait in each trial's tracking/spool.jsonl; when the store is reachable, deliver them with:",
                  f"  emorl sync {shlex.quote(str(plan.output_dir))}",
                  "(or run the same command again)" if outcome.having("unfinished") or outcome.having("failed")
                  else f"or run the same command again:\n  {again}"]
    return lines


def short_failure(text: str) -> str:
    """The telling part of a delivery failure: an HTTP client's message ends with the system's own
    (``[Errno 111] Connection refused``); anything else, its start."""
    errno = re.findall(r"\[Errno -?\d+\] [^'\")]+", text)
    return errno[-1] if errno else text[:200]


def command(args: argparse.Namespace, only: list[str] | None = None) -> str:
    """The command line of this launch (with ``--only`` replaced when given)."""
    parts = ["emorl", "sweep", args.spec, *args.overrides]
    for name in _REPEATED_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    if not args.prepare_data:
        parts.append("--no-data-prep")
    chosen = only if only is not None else ([args.only] if args.only else [])
    if chosen:
        parts += ["--only", ",".join(chosen)]
    return " ".join(shlex.quote(part) for part in parts)
