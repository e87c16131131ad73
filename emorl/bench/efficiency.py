"""Efficiency benchmark (``emorl bench efficiency``): the paper's Sec. 4.4 and Fig. 10.

For each model and image size: the time of a forward pass (test time: ``torch.no_grad``,
eval mode) and of a forward + backward pass (training: the loss and its backward) on a
mini-batch (default 4), the peak memory of each pass, and on a GPU the largest mini-batch
whose forward + backward pass fits in a memory budget; then every ratio against IODINE.

Models (the paper's CLEVR settings, K = 7, D = 64):

* ``emorl-iN``: EfficientMORL with I = N refinement steps (L = 3, the paper's decoder,
  mixture likelihood, sigma 0.1); ``emorl-xs-iN``: E-MORL-X-S, the same with Slot Attention's
  deconvolutional decoder (the paper does not say which I its E-X-S used; default I = 3).
  A ``-trainer`` suffix (``emorl-i3-trainer``, label ``E-3t``) times the pass as the trainer
  runs it: channels_last and the fused ``forward_backward`` (same gradients, docs/model.md);
  without it, ``model(images).loss.backward()`` in NCHW, as the baselines are timed.
* ``slot_attention``: 3 iterations, the deconvolutional decoder; ``slot_mlp``.
* ``genesis``: GENESIS with its official sizes (|z^m| = 64, |z^c| = 16, the mixture with sigma
  0.7); ``genesis_s`` (one latent per component); ``monet`` (MONet's sizes, a U-Net of 5
  blocks, 6 from 128x128 as its CLEVR setting). None of them refines: one pass.
* ``iodine``: T = 5 refinement steps, the original's CLEVR sizes.

Timing: ``--warmup`` passes, then the median of ``--repeats`` passes, each timed with
``time.perf_counter`` around the pass (with ``torch.cuda.synchronize`` before and after on
CUDA). Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during the pass
minus what was allocated before it (model, inputs); gradients count. On the CPU the
resident-set high-water mark (``VmHWM``) of a fresh child process: it builds the model,
runs one warm-up pass, frees and trims the heap, resets the mark (``/proc/self/clear_refs``)
and reports ``VmHWM`` after one more pass minus ``VmRSS`` before it. The child runs with
glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` so that large tensors are mapped and unmapped
one by one and the resident set follows the live tensors (Linux only; elsewhere: n/a).
Largest mini-batch (CUDA only): doubling, then bisection, each try a forward + backward
pass under ``torch.cuda.set_per_process_memory_fraction(budget / total)``; a try that
raises out-of-memory does not fit.

Writes ``efficiency.md`` (Markdown table), ``efficiency.csv`` and ``efficiency.png``
(Fig. 10 style: one line per image size across the models) into ``--out``. Not a test:
the lead runs it and records the numbers in docs/benchmarks.md. A quick check:
``emorl bench efficiency --sizes 64 --models emorl-i0 iodine --warmup 1 --repeats 2``.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emorl.bench.timing import synchronize, time_calls
from emorl.errors import ConfigError

DEFAULT_MODELS = ("emorl-i0", "emorl-i1", "emorl-i3", "emorl-xs-i3", "slot_attention", "genesis", "iodine")
REFERENCE = "iodine"
PAPER = ("paper (RTX 2080 Ti, batch 4, 128x128): EfficientMORL at I = 0 has a 10x faster forward pass "
         "and a 6x faster forward + backward pass than IODINE (Sec. 4.4, Fig. 10)")
CLEVR = dict(num_slots=7)
MIB = 2**20


# -- the models ------------------------------------------------------------------------------------
@dataclass
class BenchModel:
    """A model of the benchmark: how to build it at an image size and how to call it."""

    name: str  # as given on the command line
    label: str  # Fig. 10's short label
    config: dict  # build_model mapping without image_size
    call: dict = field(default_factory=dict)  # forward keyword arguments
    trainer_path: bool = False  # the trainer's step: forward_backward, channels_last

    def build(self, image_size: int) -> torch.nn.Module:
        from emorl.models import build_model

        config = {**self.config, "image_size": image_size}
        if config["name"] == "monet" and image_size >= 128:  # MONet's CLEVR U-Net: 6 blocks (5 below)
            config["unet_channels"] = [32, 32, 32, 64, 64, 64]
        model = build_model(config)
        return model.to(memory_format=torch.channels_last) if self.trainer_path else model


def bench_model(name: str) -> BenchModel:
    """The :class:`BenchModel` of a name: emorl-iN, emorl-xs-iN, slot_attention, slot_mlp, genesis, genesis_s,
    monet or iodine."""
    emorl = re.fullmatch(r"emorl-(xs-)?i(\d+)(-trainer)?", name)
    if emorl:
        steps, trainer_path = int(emorl.group(2)), bool(emorl.group(3))
        decoder = "deconv" if emorl.group(1) else "broadcast"
        config = dict(name="efficient_morl", **CLEVR, latent_dim=64, stochastic_layers=3, refine_steps=steps,
                      decoder=decoder, likelihood="mixture", sigma=0.1)
        label = (f"E-X-S-{steps}" if emorl.group(1) else f"E-{steps}") + ("t" if trainer_path else "")
        return BenchModel(name, label, config, {"refine_steps": steps}, trainer_path)
    if name == "slot_attention":
        return BenchModel(name, "SA", dict(name="slot_attention", **CLEVR, slot_dim=64, iterations=3, decoder="deconv"),
                          {"refine_steps": 3})
    if name == "slot_mlp":
        return BenchModel(name, "Slot MLP", dict(name="slot_mlp", **CLEVR, slot_dim=64, decoder="deconv"))
    if name in ("genesis", "genesis_s"):
        return BenchModel(name, "GENESIS" if name == "genesis" else "GENESIS-S", dict(name=name, **CLEVR))
    if name == "monet":
        return BenchModel(name, "MONet", dict(name="monet", **CLEVR))
    if name == "iodine":
        return BenchModel(name, "IODINE", dict(name="iodine", **CLEVR, latent_dim=64, refine_steps=5),
                          {"refine_steps": 5})
    raise ConfigError(f"--models: unknown model {name!r}; choose from emorl-iN, emorl-xs-iN (N = refinement steps I; "
                      "append -trainer for the trainer's fused step), "
                      "slot_attention, slot_mlp, genesis, genesis_s, monet, iodine")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_images(batch: int, image_size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """A fixed batch of random images in [-1, 1] (the cost does not depend on the content)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, image_size, image_size, generator=generator) * 2 - 1).to(device)


# -- one pass ---------------------------------------------------------------------------------------
def run_pass(model: torch.nn.Module, images: torch.Tensor, bench: BenchModel, backward: bool) -> None:
    """One forward pass (no_grad, eval mode) or one forward + backward pass (train mode); a
    ``-trainer`` model runs them as the trainer does (channels_last, ``forward_backward``)."""
    if bench.trainer_path:
        images = images.contiguous(memory_format=torch.channels_last)
    if backward:
        model.train()
        model.zero_grad(set_to_none=True)
        if bench.trainer_path:
            out = model.forward_backward(images, **bench.call)
        else:
            out = model(images, **bench.call)
            out.loss.backward()
    else:
        model.eval()
        with torch.no_grad():
            out = model(images, **bench.call)
    del out


def time_pass(model, images, bench: BenchModel, backward: bool, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` passes after ``warmup`` untimed ones."""
    return time_calls(lambda: run_pass(model, images, bench, backward), images.device, warmup, repeats)


def cuda_peak_memory(model, images, bench: BenchModel, backward: bool) -> int:
    """Bytes allocated at the peak of one pass beyond what was allocated before it."""
    device = images.device
    model.zero_grad(set_to_none=True)
    gc.collect()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run_pass(model, images, bench, backward)
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    model.zero_grad(set_to_none=True)
    return peak


# -- CPU memory in a child process ---------------------------------------------------------------------
def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise OSError(f"/proc/self/status has no {key}")


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_child_main(argv: list[str] | None = None) -> int:
    """Entry point of the child process: prints {"peak_bytes": ..., "method": ...} as JSON."""
    spec = json.loads((argv or sys.argv[1:])[0])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    bench = bench_model(spec["model"])
    model = bench.build(spec["image_size"])
    images = make_images(spec["batch"], spec["image_size"], torch.device("cpu"), spec["seed"])
    run_pass(model, images, bench, spec["backward"])  # warm-up: lazy initialisation
    model.zero_grad(set_to_none=True)
    gc.collect()
    _trim_heap()
    before = _proc_status_bytes("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset VmHWM to the current RSS
        method = "rss-hwm"
    except OSError:
        method = "rss-hwm-not-reset (includes the warm-up pass)"
    run_pass(model, images, bench, spec["backward"])
    peak = _proc_status_bytes("VmHWM") - before
    print(json.dumps({"peak_bytes": peak, "method": method}))
    return 0


def cpu_peak_memory(model_name: str, image_size: int, batch: int, backward: bool, threads: int | None,
                    seed: int) -> tuple[float, str]:
    """(peak bytes of one pass, method) measured in a fresh child process; (nan, why) if impossible."""
    if not Path("/proc/self/status").exists():
        return math.nan, "n/a (needs Linux /proc)"
    spec = dict(model=model_name, image_size=image_size, batch=batch, backward=backward, threads=threads, seed=seed)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, "-c", "import sys; from emorl.bench.efficiency import memory_child_main as m; "
               "sys.exit(m())", json.dumps(spec)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return math.nan, f"n/a (child failed: {result.stderr.strip().splitlines()[-1:]})"
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    return float(answer["peak_bytes"]), answer["method"]


# -- largest mini-batch (CUDA) ----------------------------------------------------------------------------
def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def fits(model, image_size: int, batch: int, bench: BenchModel, device: torch.device, seed: int) -> bool:
    """Whether a forward + backward pass at this mini-batch runs without running out of memory."""
    images = None
    try:
        images = make_images(batch, image_size, device, seed)
        run_pass(model, images, bench, backward=True)
        synchronize(device)
        return True
    except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
        if not _is_out_of_memory(error):
            raise
        return False
    finally:
        del images
        model.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()


def search_largest(fits_batch, limit: int) -> tuple[int, bool]:
    """Largest b in [0, limit] with ``fits_batch(b)`` (assumed monotone): doubling, then bisection.

    Returns (b, capped); capped means ``limit`` itself fitted, so the true largest may be larger.
    """
    good, batch = 0, 1
    while batch <= limit and fits_batch(batch):
        good, batch = batch, batch * 2
    if batch > limit:
        if good == limit or fits_batch(limit):
            return limit, True
        batch = limit
    bad = batch  # a size that did not fit
    while bad - good > 1:
        middle = (good + bad) // 2
        if fits_batch(middle):
            good = middle
        else:
            bad = middle
    return good, False


def largest_batch(model, image_size: int, bench: BenchModel, device: torch.device, budget_bytes: int, limit: int,
                  seed: int = 0) -> tuple[int, bool]:
    """(largest mini-batch whose forward + backward pass fits the budget, whether ``limit`` capped it)."""
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget_bytes / total), device)
    gc.collect()
    torch.cuda.empty_cache()  # cached blocks of earlier passes would count against the budget
    try:
        return search_largest(lambda batch: fits(model, image_size, batch, bench, device, seed), limit)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


# -- the benchmark ------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emorl bench efficiency``."""
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help=f"models (default: {' '.join(DEFAULT_MODELS)}); emorl-iN / emorl-xs-iN for any I = N, "
                        "with -trainer: timed as the trainer runs it")
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 96, 128], help="image sizes H = W")
    parser.add_argument("--batch-size", type=int, default=4, help="mini-batch of the timed passes (paper: 4)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--warmup", type=int, default=None, help="untimed passes first (default: CUDA 20, CPU 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes, median reported (CUDA 100, CPU 10)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--no-max-batch", action="store_true", help="skip the largest-mini-batch search (CUDA)")
    parser.add_argument("--memory-budget-gib", type=float, default=11.0,
                        help="memory budget of the largest-mini-batch search (default 11: an RTX 2080 Ti)")
    parser.add_argument("--max-batch-limit", type=int, default=4096, help="stop the search at this mini-batch")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-efficiency"), help="output folder")


def _device(name: str) -> torch.device:
    from emorl.engine.train import resolve_device

    return resolve_device(name)


def _check_arguments(args: argparse.Namespace) -> None:
    for name in ("batch_size", "max_batch_limit"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    for name in ("warmup", "repeats"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            raise ConfigError(f"--{name}={value} must be >= {0 if name == 'warmup' else 1}")
    for size in args.sizes:
        if size < 16 or size % 16:
            raise ConfigError(f"--sizes: {size} is not allowed; the deconvolutional decoder needs multiples of 16 "
                              "(the paper: 64 96 128)")


def measure(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """One row per (model, image size) with times in ms, memory in MiB and the largest batch."""
    warmup = args.warmup if args.warmup is not None else (20 if device.type == "cuda" else 2)
    repeats = args.repeats if args.repeats is not None else (100 if device.type == "cuda" else 10)
    models = [bench_model(name) for name in args.models]
    rows = []
    for size in args.sizes:
        for bench in models:
            torch.manual_seed(args.seed)
            model = bench.build(size).to(device)
            images = make_images(args.batch_size, size, device, args.seed)
            row = dict(model=bench.name, label=bench.label, image_size=size, batch=args.batch_size,
                       parameters=count_parameters(model), repeats=repeats)
            for key, backward in (("forward", False), ("forward_backward", True)):
                times = time_pass(model, images, bench, backward, warmup, repeats)
                row[f"{key}_ms"] = 1000 * statistics.median(times)
                if args.no_memory:
                    row[f"{key}_peak_mib"], row["memory_method"] = math.nan, "skipped"
                elif device.type == "cuda":
                    row[f"{key}_peak_mib"] = cuda_peak_memory(model, images, bench, backward) / MIB
                    row["memory_method"] = "cuda-max-allocated"
                else:
                    peak, method = cpu_peak_memory(bench.name, size, args.batch_size, backward, args.threads, args.seed)
                    row[f"{key}_peak_mib"], row["memory_method"] = peak / MIB, method
            row["max_batch"], row["max_batch_capped"] = math.nan, False
            if device.type == "cuda" and not args.no_max_batch:
                del images
                budget = int(args.memory_budget_gib * 2**30)
                row["max_batch"], row["max_batch_capped"] = largest_batch(
                    model, size, bench, device, budget, args.max_batch_limit, args.seed)
            rows.append(row)
            print(_progress(row), flush=True)
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    add_ratios(rows)
    return rows


def _progress(row: dict) -> str:
    return (f"{row['label']:>9} {row['image_size']:>4}px: forward {row['forward_ms']:.1f} ms, forward+backward "
            f"{row['forward_backward_ms']:.1f} ms, peak {row['forward_peak_mib']:.0f} / "
            f"{row['forward_backward_peak_mib']:.0f} MiB, max batch {row['max_batch']}")


def _ratio(numerator: float, denominator: float) -> float:
    numerator, denominator = float(numerator), float(denominator)
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def add_ratios(rows: list[dict]) -> None:
    """Speed-ups (IODINE's time / the model's) and memory ratios (the model's / IODINE's) per image size."""
    reference = {row["image_size"]: row for row in rows if row["model"] == REFERENCE}
    for row in rows:
        ref = reference.get(row["image_size"])
        if ref is None:
            ref = dict.fromkeys(("forward_ms", "forward_backward_ms", "forward_backward_peak_mib", "max_batch"),
                                math.nan)
        row["forward_speedup_vs_iodine"] = _ratio(ref["forward_ms"], row["forward_ms"])
        row["forward_backward_speedup_vs_iodine"] = _ratio(ref["forward_backward_ms"], row["forward_backward_ms"])
        row["memory_vs_iodine"] = _ratio(row["forward_backward_peak_mib"], ref["forward_backward_peak_mib"])
        row["max_batch_vs_iodine"] = _ratio(row["max_batch"], ref["max_batch"])


COLUMNS = ("model", "label", "image_size", "batch", "parameters", "repeats", "forward_ms", "forward_backward_ms",
           "forward_peak_mib", "forward_backward_peak_mib", "memory_method", "max_batch", "max_batch_capped",
           "forward_speedup_vs_iodine", "forward_backward_speedup_vs_iodine", "memory_vs_iodine",
           "max_batch_vs_iodine")


def _fmt(value, digits: int = 1, unit: str = "") -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}{unit}"
    return str(value)


def markdown_table(rows: list[dict], header_lines: list[str]) -> str:
    lines = [*header_lines, "",
             "| model | H=W | parameters | forward ms | fwd+bwd ms | forward peak MiB | fwd+bwd peak MiB | max batch "
             "| forward speed-up vs IODINE | fwd+bwd speed-up vs IODINE | fwd+bwd memory / IODINE "
             "| max batch / IODINE |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        max_batch = _fmt(r["max_batch"], 0) + ("+" if r["max_batch_capped"] else "")
        lines.append(
            f"| {r['label']} | {r['image_size']} | {r['parameters']:,} | {_fmt(r['forward_ms'])} | "
            f"{_fmt(r['forward_backward_ms'])} | {_fmt(r['forward_peak_mib'], 0)} | "
            f"{_fmt(r['forward_backward_peak_mib'], 0)} | {max_batch} | {_fmt(r['forward_speedup_vs_iodine'], 2, 'x')} | "
            f"{_fmt(r['forward_backward_speedup_vs_iodine'], 2, 'x')} | {_fmt(r['memory_vs_iodine'], 2)} | "
            f"{_fmt(r['max_batch_vs_iodine'], 2)} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path, device: torch.device) -> None:
    """Fig. 10 style: forward time, forward + backward time and memory, one line per image size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["label"] for r in rows))
    memory_key, memory_title = (("max_batch", "largest mini-batch in the budget") if device.type == "cuda"
                                and not all(math.isnan(float(r["max_batch"])) for r in rows)
                                else ("forward_backward_peak_mib", "peak memory, forward + backward (MiB)"))
    panels = (("forward_ms", "forward pass (ms)"), ("forward_backward_ms", "forward + backward (ms)"),
              (memory_key, memory_title))
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for axis, (key, title) in zip(axes, panels):
        for size in sorted({r["image_size"] for r in rows}):
            by_label = {r["label"]: float(r[key]) for r in rows if r["image_size"] == size}
            axis.plot(labels, [by_label.get(label, math.nan) for label in labels], marker="o", label=f"{size}x{size}")
        axis.set_title(title)
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
        axis.tick_params(axis="x", rotation=30)
    axes[0].legend(title="image size")
    batch = rows[0]["batch"] if rows else "?"
    figure.suptitle(f"Efficiency on {_device_name(device)}, mini-batch {batch} (times: median)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run(args: argparse.Namespace) -> int:
    """Measure, print the Markdown table and write it, the CSV and the plot into ``args.out``."""
    _check_arguments(args)
    for name in args.models:
        bench_model(name)  # unknown names fail before anything runs
    device = _device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = measure(args, device)
    budget = (f"; largest mini-batch within {args.memory_budget_gib:g} GiB (forward + backward)"
              if device.type == "cuda" and not args.no_max_batch else "")
    arguments = " ".join(sys.argv[3:]) if sys.argv[1:3] == ["bench", "efficiency"] else ""
    header = [
        f"# Efficiency: {_device_name(device)}",
        "",
        f"{datetime.date.today().isoformat()}, torch {torch.__version__}, mini-batch {args.batch_size}, "
        f"median of {rows[0]['repeats'] if rows else '?'} passes after warm-up; memory: "
        f"{rows[0]['memory_method'] if rows else '?'}{budget}.",
        f"Command: `emorl bench efficiency {arguments}`",
        "",
        f"Reference: {PAPER}.",
    ]
    table = markdown_table(rows, header)
    (out / "efficiency.md").write_text(table)
    write_csv(rows, out / "efficiency.csv")
    plot(rows, out / "efficiency.png", device)
    print(table)
    print(f"wrote {out / 'efficiency.md'}, {out / 'efficiency.csv'}, {out / 'efficiency.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emorl bench efficiency", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
