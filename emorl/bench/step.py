"""``emorl bench step``: time a training step (forward, backward, clipping, Adam) at the
paper's settings, in the plain computation and in the optimised one, fp32 and bf16.

Modes:
  plain      the graph as the authors' code builds it: plain decoder, refinement gradients
             with create_graph=True, one backward of the whole loss (fp32, NCHW)
  fast       the same mathematics as the trainer runs it by default: factorized first decoder
             layer, one decoder backward per step (``forward_backward``), channels_last, fp32
  fast-bf16  ``fast`` under bf16 autocast (``trainer.precision=bf16``)
  fast-tf32  ``fast`` with TensorFloat-32 matrix products and convolutions (CUDA, Ampere and newer;
             ``trainer.precision=tf32``). Every other mode computes float32 as IEEE float32, on a
             GPU too (``trainer.precision=fp32``).
Prints a Markdown table (the median seconds of a test-time forward pass and of a training
step over ``--repeats`` after ``--warmup``,
FLOPs of convolutions and matrix products by torch's formulas, achieved GFLOP/s, and with
``--peak-tflops`` their share of the device's peak) and, with ``--profile``, the operators that cost
most time for each row.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from emorl.bench.timing import time_calls

SETTINGS = {
    # name: (model overrides, batch size)
    "tetrominoes": (dict(image_size=35, num_slots=4, latent_dim=32, decoder="broadcast_light", sigma=0.3), 32),
    "clevr6": (dict(image_size=96, num_slots=7, latent_dim=64, decoder="broadcast", likelihood="mixture",
                    sigma=0.1), 4),
    "multi_dsprites": (dict(image_size=64, num_slots=6, latent_dim=64, decoder="broadcast", sigma=0.1), 32),
}
MODES = {  # model overrides, fused backward, precision, channels_last
    "plain": (dict(factorized_decoder=False, refine_grad_create_graph=True), False, "fp32", False),
    "fast": (dict(), True, "fp32", True),
    "fast-nchw": (dict(), True, "fp32", False),  # trainer.channels_last=false
    "fast-bf16": (dict(), True, "bf16", True),
    "fast-tf32": (dict(), True, "tf32", True),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", nargs="+", default=["tetrominoes:0", "tetrominoes:3", "clevr6:0", "clevr6:1",
                                                           "clevr6:3"],
                        help="SETTING:I pairs; settings: " + ", ".join(SETTINGS))
    parser.add_argument("--modes", nargs="+", default=["plain", "fast", "fast-bf16"], choices=list(MODES))
    parser.add_argument("--batch-size", type=int, default=None, help="override the setting's batch size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoder")
    parser.add_argument("--profile", action="store_true", help="print the costliest operators per row")
    parser.add_argument("--peak-tflops", nargs="+", default=[], metavar="PRECISION=TFLOPS",
                        help="the device's peak for a column of achieved/peak, e.g. fp32=67 tf32=495 bf16=989 "
                             "(dense, from the vendor's data sheet)")


def build(setting: str, mode: str, device: torch.device, compile_modules: bool = False):
    """(model, optimiser, fused, precision, channels_last) of a setting in a mode."""
    from emorl.engine.precision import set_float32_precision
    from emorl.models.emorl import EMORLConfig, EfficientMORL

    overrides, _ = SETTINGS[setting]
    model_overrides, fused, precision, channels_last = MODES[mode]
    set_float32_precision(precision)
    torch.manual_seed(0)
    model = EfficientMORL(EMORLConfig(**overrides, **model_overrides)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_modules:
        model.encoder.compile()
        model.decoder.compile()
    optimizer = torch.optim.Adam(model.parameters(), lr=4e-4, foreach=True)
    return model, optimizer, fused, precision, channels_last


def training_step(model, optimizer, images, refine_steps, fused, precision, device) -> None:
    from emorl.engine.train import compute_gradients
    from emorl.geco import GECOObjective

    optimizer.zero_grad(set_to_none=True)
    objective = GECOObjective(target=-1e4, multiplier=1.0, c_ema=-100.0)
    compute_gradients(model, images, refine_steps, objective, device, precision, fused)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()


def count_flops(model, optimizer, images, refine_steps, fused, precision, device) -> float:
    """FLOPs of one step (forward and backward) by torch's FLOP formulas for matrix products and
    convolutions, counted with a dispatch mode (``FlopCounterMode``'s module hooks do not work
    with the ``autograd.grad`` calls of the fused step)."""
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
        training_step(model, optimizer, images, refine_steps, fused, precision, device)
    return float(Counter.total)


def time_steps(model, optimizer, images, refine_steps, fused, precision, device, warmup, repeats) -> list[float]:
    return time_calls(lambda: training_step(model, optimizer, images, refine_steps, fused, precision, device),
                      device, warmup, repeats)


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


def profile_table(model, optimizer, images, refine_steps, fused, precision, device, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        training_step(model, optimizer, images, refine_steps, fused, precision, device)
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
    print(f"# emorl bench step: device={device}, torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"warmup={args.warmup}, repeats={args.repeats}{', compiled' if args.compile else ''}\n")
    peak_column = " % of peak |" if peaks else ""
    print("| setting | batch | I | mode | forward s | training step s (median) | min | GFLOP/step | GFLOP/s |"
          + peak_column)
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if peaks else ""))
    profiles = []
    for item in args.settings:
        setting, _, steps_text = item.partition(":")
        refine_steps = int(steps_text or 0)
        batch = args.batch_size or SETTINGS[setting][1]
        size = SETTINGS[setting][0]["image_size"]
        generator = torch.Generator().manual_seed(0)
        batch_images = (torch.rand(batch, 3, size, size, generator=generator) * 2 - 1).to(device)
        for mode in args.modes:
            model, optimizer, fused, precision, channels_last = build(setting, mode, device, args.compile)
            images = batch_images.contiguous(memory_format=torch.channels_last) if channels_last else batch_images
            flops = count_flops(model, optimizer, images, refine_steps, fused, precision, device)
            times = time_steps(model, optimizer, images, refine_steps, fused, precision, device, args.warmup,
                               args.repeats)
            median = statistics.median(times)
            forward = time_forward(model, images, refine_steps, precision, device, args.warmup, args.repeats)
            share = ""
            if peaks:
                peak = peaks.get(precision)
                share = f" {100 * flops / median / peak:.1f} |" if peak else " - |"
            print(f"| {setting} | {batch} | {refine_steps} | {mode} | {forward:.3f} | {median:.3f} | "
                  f"{min(times):.3f} | {flops / 1e9:.0f} | {flops / 1e9 / median:.0f} |{share}", flush=True)
            if args.profile:
                profiles.append((f"{setting} I={refine_steps} {mode}",
                                 profile_table(model, optimizer, images, refine_steps, fused, precision, device)))
    for title, table in profiles:
        print(f"\n## {title}\n{table}")
    return 0
