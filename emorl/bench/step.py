"""``emorl bench step``: time a training step (forward, refinement gradients, backward, clipping,
Adam, GECO update) at the paper's settings, as the trainer runs it, in each mode.

Modes:
  plain       the graph as the authors' code builds it: plain decoder, refinement gradients
              with create_graph=True, one backward of the whole loss (fp32, NCHW)
  fast        the same mathematics as the trainer runs it by default: factorized first decoder
              layer, one decoder backward per step (``forward_backward``), channels_last, fp32
  fast-nchw   ``fast`` without channels_last (``trainer.channels_last=false``)
  fast-bf16   ``fast`` under bf16 autocast (``trainer.precision=bf16``)
  fast-tf32   ``fast`` with TensorFloat-32 matrix products and convolutions (CUDA, Ampere and newer;
              ``trainer.precision=tf32``). Every other mode computes float32 as IEEE float32, on a
              GPU too (``trainer.precision=fp32``).
  graph, graph-tf32, graph-bf16
              ``fast``, ``fast-tf32``, ``fast-bf16`` replayed as a CUDA graph, as the trainer runs
              them on a GPU by default (``trainer.cuda_graph=true``; CUDA only)
  authors, authors-fp32, authors-tf32, authors-bf16
              the authors' released code (``--authors-code PATH``, a checkout of
              pemami4911/EfficientMORL with its package ``sacred`` importable): their model and their
              training step (forward, backward, clipping 5.0, Adam, their GECO update), under
              PyTorch's default precision flags (``authors``), IEEE fp32, TF32, or bf16 autocast
Every mode steps with GECO active (after its warm start), so the GECO update is timed too.

Records: the rows of the modes the trainer runs (not ``--compile``, not the authors' code) are added
to the per-machine step-time records (:mod:`emorl.bench.records`; ``--no-record`` skips it), from
which ``emorl sweep SPEC --dry-run`` estimates a sweep's cost.

Timing: ``--warmup`` untimed steps (at least 3 for the graph modes: two eager steps and the
capture), then ``--repeats`` blocks of ``--block`` consecutive steps, each block timed with the
device synchronised only at its ends (what training sees: steps queue behind each other); the
table gives the median and the fastest block's seconds per step. Prints a Markdown table with
FLOPs of convolutions and matrix products by torch's formulas, achieved GFLOP/s, and with
``--peak-tflops`` their share of the device's peak; ``--profile`` adds the costliest operators
of each row; ``--json FILE`` writes the rows for other tools (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from emorl.bench import records
from emorl.bench.timing import time_calls

SETTINGS = {
    # name: (model overrides, batch size)
    "tetrominoes": (dict(image_size=35, num_slots=4, latent_dim=32, decoder="broadcast_light", sigma=0.3), 32),
    "clevr6": (dict(image_size=96, num_slots=7, latent_dim=64, decoder="broadcast", likelihood="mixture",
                    sigma=0.1), 4),
    "multi_dsprites": (dict(image_size=64, num_slots=6, latent_dim=64, decoder="broadcast", sigma=0.1), 32),
}
MODES = {  # model overrides, fused backward, precision, channels_last, CUDA graph
    "plain": (dict(factorized_decoder=False, refine_grad_create_graph=True), False, "fp32", False, False),
    "fast": (dict(), True, "fp32", True, False),
    "fast-nchw": (dict(), True, "fp32", False, False),  # trainer.channels_last=false
    "fast-bf16": (dict(), True, "bf16", True, False),
    "fast-tf32": (dict(), True, "tf32", True, False),
    "graph": (dict(), True, "fp32", True, True),
    "graph-tf32": (dict(), True, "tf32", True, True),
    "graph-bf16": (dict(), True, "bf16", True, True),
}
AUTHORS_MODES = {"authors": None, "authors-fp32": "fp32", "authors-tf32": "tf32", "authors-bf16": "bf16"}
GECO_TARGET = -1e4  # below any NLL of these settings: zeta moves every step, as in the paper's runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", nargs="+", default=["tetrominoes:0", "tetrominoes:3", "clevr6:0", "clevr6:1",
                                                           "clevr6:3"],
                        help="SETTING:I pairs; settings: " + ", ".join(SETTINGS))
    parser.add_argument("--modes", nargs="+", default=["plain", "fast", "fast-bf16"],
                        choices=list(MODES) + list(AUTHORS_MODES))
    parser.add_argument("--batch-size", type=int, default=None, help="override the setting's batch size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks")
    parser.add_argument("--block", type=int, default=1, help="consecutive steps per timed block")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoder")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms")
    parser.add_argument("--no-forward", action="store_true", help="skip the test-time forward column")
    parser.add_argument("--profile", action="store_true", help="print the costliest operators per row")
    parser.add_argument("--peak-tflops", nargs="+", default=[], metavar="PRECISION=TFLOPS",
                        help="the device's peak for a column of achieved/peak, e.g. fp32=67 tf32=495 bf16=989 "
                             "(dense, from the vendor's data sheet)")
    parser.add_argument("--authors-code", type=Path, default=None,
                        help="a checkout of the authors' code, for the authors* modes")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--record-to", type=Path, default=None,
                        help="the per-machine step-time records that `emorl sweep SPEC --dry-run` reads for its "
                             "cost estimate (default: <output root>/bench/step-times.json)")
    parser.add_argument("--no-record", action="store_true", help="do not add the rows to the step-time records")


@dataclass
class StepRun:
    """One mode of one setting, ready to step: ``step()`` runs one training step on ``images``."""

    model: torch.nn.Module
    step: object  # () -> None
    images: torch.Tensor
    precision: str
    eager_step: object  # () -> None: the same step, never a graph replay (for FLOP counting, profiles)


def build(setting: str, mode: str, device: torch.device, images: torch.Tensor, refine_steps: int,
          compile_modules: bool = False) -> StepRun:
    """Our model in ``mode`` with the trainer's :class:`~emorl.engine.step.TrainingStep` (Adam as the
    trainer makes it, clipping 5.0, GECO after its warm start, a constant learning rate)."""
    from emorl.engine.precision import set_float32_precision
    from emorl.engine.step import TrainingStep, make_optimizer
    from emorl.geco import GECO
    from emorl.models.emorl import EMORLConfig, EfficientMORL

    overrides, _ = SETTINGS[setting]
    model_overrides, fused, precision, channels_last, cuda_graph = MODES[mode]
    if cuda_graph and device.type != "cuda":
        raise SystemExit(f"--modes {mode}: CUDA graphs need --device cuda")
    set_float32_precision(precision)
    torch.manual_seed(0)
    model = EfficientMORL(EMORLConfig(**overrides, **model_overrides)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if compile_modules:
        model.encoder.compile()
        model.decoder.compile()

    class Optim:
        lr, betas, eps, implementation = 4e-4, (0.9, 0.999), 1e-8, "foreach"

    def make_step(graph: bool):
        geco = GECO(GECO_TARGET, warm_start=0, device=device)
        return TrainingStep(model, make_optimizer(model, Optim, device), lambda step: 4e-4, device=device,
                            clip_norm=5.0, geco=geco, precision=precision, fused=fused, cuda_graph=graph)

    training_step, counter = make_step(cuda_graph), {"step": 0}

    def step():
        training_step(images, counter["step"] + 1, refine_steps)  # past the warm start: GECO's phase
        counter["step"] += 1

    eager = make_step(False) if cuda_graph else training_step
    return StepRun(model, step, images, precision, lambda: eager(images, 1, refine_steps))


def authors_code(repo: Path):
    """(their ``lib.model`` module, their GECO class) from a checkout of the authors' code. Their
    package imports ``sacred``, which must be importable."""
    repo = Path(repo).expanduser().resolve()
    if not (repo / "lib" / "model.py").exists():
        raise SystemExit(f"--authors-code {repo}: no lib/model.py there; give a checkout of pemami4911/EfficientMORL")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from lib import model as theirs  # noqa: E402  (their package, from the user's checkout)
    from lib.geco import GECO as TheirGECO

    return theirs, TheirGECO


def authors_model(repo: Path, setting: str, refine_steps: int, batch: int, geco_warm_start: int = 0):
    """Their EfficientMORL at one of :data:`SETTINGS` (their configs/train/*/EMORL.json), built
    with their initialisation, and their GECO class."""
    theirs, their_geco = authors_code(repo)
    overrides, _ = SETTINGS[setting]
    size = overrides["image_size"]
    config = {  # their Net ingredient's configuration
        "K": overrides["num_slots"], "z_size": overrides["latent_dim"], "input_size": [3, size, size],
        "stochastic_layers": 3, "refinement_iters": refine_steps, "log_scale": math.log(overrides["sigma"]),
        "image_likelihood": "GMM" if overrides.get("likelihood") == "mixture" else "Gaussian",
        "image_decoder": "small" if overrides["decoder"] == "broadcast_light" else "iodine",
        "geco_warm_start": geco_warm_start, "use_DualGRU": True, "bottom_up_prior": False,
        "reverse_prior_plusplus": True,
    }
    for function in theirs.net.captured_functions:  # what a sacred run would set
        function.config = config
    return theirs.EfficientMORL(batch_size=batch, use_geco=True), their_geco


def build_authors(repo: Path, setting: str, mode: str, device: torch.device, images: torch.Tensor,
                  refine_steps: int) -> StepRun:
    """The authors' model and training step from their released code (see the module docstring)."""
    from emorl.engine.precision import autocast_context, set_float32_precision

    precision = AUTHORS_MODES[mode]
    if precision is None:  # PyTorch's defaults: cuDNN convolutions may use TF32, matrix products may not
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        set_float32_precision(precision)
    torch.manual_seed(0)
    model, their_geco = authors_model(repo, setting, refine_steps, len(images))
    model = model.to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=4e-4)
    geco = their_geco(GECO_TARGET, 0.99, 1)
    counter = {"step": 0}

    def step():  # their train.py's loop body, one process (no DDP), GECO past its warm start
        optimizer.zero_grad()
        with autocast_context(device, precision or "fp32"):
            out = model(images, geco, counter["step"] + 1, 1.0)
        out["total_loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)
        optimizer.step()
        model.geco_C_ema = geco.update_ema(model.geco_C_ema, out["nll"])
        model.geco_beta = geco.step_beta(model.geco_C_ema, model.geco_beta, 1e-6)
        counter["step"] += 1

    return StepRun(model, step, images, precision or "fp32", step)


def count_flops(fn) -> float:
    """FLOPs of ``fn()`` by torch's FLOP formulas for matrix products and convolutions, counted
    with a dispatch mode (``FlopCounterMode``'s module hooks do not work with the ``autograd.grad``
    calls of the fused step)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Counter.total += formula(*args, **kwargs, out_val=out)
            return out

    with Counter():
        fn()
    return float(Counter.total)


def time_steps(run: StepRun, device: torch.device, warmup: int, repeats: int, block: int = 1) -> list[float]:
    """Seconds per step of each timed block (see the module docstring)."""
    def steps():
        for _ in range(block):
            run.step()

    for _ in range(warmup):
        run.step()
    return [seconds / block for seconds in time_calls(steps, device, 0, repeats)]


def time_forward(model, images, refine_steps, precision, device, warmup, repeats) -> float:
    """Median seconds of a test-time forward pass (eval mode, ``torch.no_grad``; the refinement
    still computes its gradient inputs)."""
    from emorl.engine.precision import autocast_context

    def forward():
        with autocast_context(device, precision):
            model(images, refine_steps=refine_steps)

    model.eval()
    try:
        with torch.no_grad():
            return statistics.median(time_calls(forward, device, warmup, repeats))
    finally:
        model.train()


def profile_table(fn, device: torch.device, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
    key = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def parse_peaks(items: list[str]) -> dict[str, float]:
    """``["fp32=67", "bf16=989"]`` -> ``{"fp32": 67e12, "bf16": 989e12}`` (FLOP/s)."""
    from emorl.engine.precision import PRECISIONS

    peaks = {}
    for item in items:
        precision, _, value = item.partition("=")
        try:
            peaks[precision] = float(value) * 1e12
        except ValueError:
            raise SystemExit(f"--peak-tflops: {item!r} is not PRECISION=TFLOPS, e.g. bf16=989") from None
        if precision not in PRECISIONS:
            raise SystemExit(f"--peak-tflops: {precision!r} is not one of {', '.join(PRECISIONS)}")
    return peaks


def run(args: argparse.Namespace) -> int:
    peaks = parse_peaks(args.peak_tflops)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    authors = [m for m in args.modes if m in AUTHORS_MODES]
    if authors and args.authors_code is None:
        raise SystemExit(f"--modes {' '.join(authors)} need --authors-code PATH (a checkout of their code)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# emorl bench step: device={device} ({name}), torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"warmup={args.warmup}, repeats={args.repeats} x {args.block} steps"
          f"{', compiled' if args.compile else ''}{', cudnn.benchmark' if args.cudnn_benchmark else ''}\n")
    peak_column = " % of peak |" if peaks else ""
    print("| setting | batch | I | mode | forward s | training step s (median) | min | GFLOP/step | GFLOP/s |"
          + peak_column)
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if peaks else ""))
    profiles, rows = [], []
    for item in args.settings:
        setting, _, steps_text = item.partition(":")
        refine_steps = int(steps_text or 0)
        batch = args.batch_size or SETTINGS[setting][1]
        size = SETTINGS[setting][0]["image_size"]
        generator = torch.Generator().manual_seed(0)
        batch_images = (torch.rand(batch, 3, size, size, generator=generator) * 2 - 1).to(device)
        for mode in args.modes:
            if mode in AUTHORS_MODES:
                run_ = build_authors(args.authors_code, setting, mode, device, batch_images, refine_steps)
            else:
                run_ = build(setting, mode, device, batch_images, refine_steps, args.compile)
            flops = count_flops(run_.eager_step)
            warmup = max(args.warmup, 3) if MODES.get(mode, (0,) * 5)[4] else args.warmup
            times = time_steps(run_, device, warmup, args.repeats, args.block)
            median = statistics.median(times)
            forward = math.nan
            if mode not in AUTHORS_MODES and not args.no_forward:
                forward = time_forward(run_.model, run_.images, refine_steps, run_.precision, device, args.warmup,
                                       args.repeats)
            share = ""
            if peaks:
                peak = peaks.get(run_.precision)
                share = f" {100 * flops / median / peak:.1f} |" if peak else " - |"
            print(f"| {setting} | {batch} | {refine_steps} | {mode} | {forward:.4f} | {median:.4f} | "
                  f"{min(times):.4f} | {flops / 1e9:.0f} | {flops / 1e9 / median:.0f} |{share}", flush=True)
            rows.append({"setting": setting, "batch": batch, "refine_steps": refine_steps, "mode": mode,
                         "precision": run_.precision, "forward_s": forward, "step_s": median,
                         "step_min_s": min(times), "flops": flops, "device": name, "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "compiled": bool(args.compile)})
            if args.profile:
                profiles.append((f"{setting} I={refine_steps} {mode}", profile_table(run_.eager_step, device)))
            del run_
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
    for title, table in profiles:
        print(f"\n## {title}\n{table}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    plain = [row for row in rows if not row["compiled"] and row["mode"] not in AUTHORS_MODES]  # as the trainer runs
    if plain and not args.no_record:
        described = records.machine(str(device), None if device.type == "cpu" else name)
        path = records.record(plain, described, args.record_to)
        print(f"\nrecorded {len(plain)} step times for {records.machine_key(described)} in {path}")
    return 0
