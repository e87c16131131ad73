"""Numerical precision of training and evaluation (``trainer.precision``).

* ``fp32``: IEEE float32 everywhere. PyTorch's own default lets cuDNN convolutions use
  TensorFloat-32 on Ampere and newer GPUs (10-bit mantissa); ``fp32`` turns that off, so that a
  GPU computes the same mathematics as the CPU to float32 tolerance.
* ``tf32``: CUDA matrix products and cuDNN convolutions in TensorFloat-32 (Ampere and newer);
  elsewhere the same as ``fp32``.
* ``bf16``: autocast to bfloat16 (CPU or GPU); what autocast keeps in float32 is IEEE float32.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

PRECISIONS = ("fp32", "tf32", "bf16")
# the backends whose ``fp32_precision`` flag ("ieee" | "tf32") decides how they compute float32
FLOAT32_BACKENDS = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)


def autocast_context(device: torch.device, precision: str, cache_enabled: bool = True):
    """bf16 autocast on ``device`` for ``bf16``; nothing otherwise. ``cache_enabled=False`` while
    capturing a CUDA graph (autocast's cache of cast weights must not outlive the capture)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
    return contextlib.nullcontext()


def set_float32_precision(precision: str) -> None:
    """Set how CUDA matrix products, cuDNN convolutions and RNNs compute float32 (process-wide)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    for backend in FLOAT32_BACKENDS:
        backend.fp32_precision = "tf32" if precision == "tf32" else "ieee"


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU computes bf16 in hardware (AVX512_BF16 or AMX); None where it cannot be told."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return None
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def precision_warning(device: torch.device, precision: str) -> str | None:
    """What to tell the user when ``precision`` does not pay off on ``device``; None when it does."""
    if precision == "bf16" and device.type == "cpu" and cpu_has_native_bf16() is False:
        return ("trainer.precision=bf16 on a CPU without AVX512_BF16 or AMX: bf16 is emulated there and a "
                "training step is several times slower than in fp32 (docs/benchmarks.md); use "
                "trainer.precision=fp32 on this machine")
    if precision == "tf32" and device.type != "cuda":
        return f"trainer.precision=tf32 is a CUDA precision; on {device.type} this run computes IEEE fp32"
    if precision == "tf32" and torch.cuda.get_device_capability(device)[0] < 8:
        return ("trainer.precision=tf32 needs an Ampere or newer GPU; "
                f"{torch.cuda.get_device_name(device)} computes IEEE fp32")
    return None
