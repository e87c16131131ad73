"""What this machine's kernels reach, the yardstick for the step benchmark's GFLOP/s: a square
matmul and the two convolution shapes that dominate the decoders, fp32 and bf16, NCHW and
channels_last (forward only, median of 10 after 3 warm-up runs).

    python benchmarks/kernels.py [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from emorl.bench.timing import time_calls


def seconds(fn, device: torch.device) -> float:
    return statistics.median(time_calls(fn, device, warmup=3, repeats=10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print("| kernel | dtype | layout | GFLOP/s |\n|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        n = 2048
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        print(f"| matmul {n}^3 | {str(dtype)[6:]} | - | {2 * n**3 / seconds(lambda: a @ b, device) / 1e9:.0f} |")
    # (batch, channels in/out, kernel, size): the light decoder's 5x5 32-channel layer at
    # Tetrominoes' grid (B*K = 128 maps of 41x41) and a 3x3 64-channel layer at 104x104.
    for batch, channels, kernel, size in ((128, 32, 5, 41), (8, 64, 3, 104)):
        for dtype in (torch.float32, torch.bfloat16):
            for layout in ("NCHW", "channels_last"):
                x = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
                w = torch.randn(channels, channels, kernel, kernel, device=device, dtype=dtype)
                if layout == "channels_last":
                    x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
                out_size = size - kernel + 1
                flops = 2 * batch * channels * channels * kernel * kernel * out_size * out_size
                rate = flops / seconds(lambda: F.conv2d(x, w), device) / 1e9
                print(f"| conv {kernel}x{kernel} {channels}ch {size}x{size} x{batch} | {str(dtype)[6:]} | {layout} | "
                      f"{rate:.0f} |")


if __name__ == "__main__":
    main()
