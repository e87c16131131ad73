"""Would FFT convolution make the fp32 step faster at identical mathematics? (issue 9)

A stride-1 convolution is a pointwise product in the Fourier domain: per frequency, a
[N, C_in] x [C_in, C_out] complex matrix product, between real FFTs of the input and the output.
For the light decoder's 5x5 layers that is about 10x fewer multiply-adds than the direct
convolution, and the result is the same linear map (float64 agreement to 1e-13 below). This
script measures whether the saving survives the FFTs and layout changes on this CPU:

    python benchmarks/fft_conv.py [--threads 2] [--step] [--repeats 7]

Part 1: each heavy layer's forward + backward (input and weight gradients), oneDNN direct
(NCHW, channels_last) against FFT. Part 2 (``--step``): the whole Tetrominoes I = 3 training
step with the encoder's and the decoder's heavy layers through FFT. Not used by the trainer:
docs/benchmarks.md, "FFT convolution", says why.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from emorl.bench.timing import time_calls

# name: (maps N, channels, input size, kernel, padding), as the models run them
LAYERS = {
    "Tetrominoes decoder 5x5 32ch": (128, 32, 39, 5, 1),
    "Tetrominoes encoder 5x5 64ch": (32, 64, 35, 5, 2),
    "CLEVR6 decoder 3x3 64ch": (28, 64, 104, 3, 0),
    "CLEVR6 encoder 5x5 64ch": (4, 64, 96, 5, 2),
}


def fft_length(size: int) -> int:
    """The smallest even 7-smooth length >= size (fast for MKL's and pocketfft's real FFTs)."""
    length = size + size % 2
    while True:
        rest = length
        for prime in (2, 3, 5, 7):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return length
        length += 2


def _frequency_major(spectrum: torch.Tensor) -> torch.Tensor:
    """[N, C, Fh, Fr] -> contiguous [Fh*Fr, N, C]."""
    n, c, fh, fr = spectrum.shape
    return spectrum.permute(2, 3, 0, 1).reshape(fh * fr, n, c).contiguous()


def _spatial_major(spectrum: torch.Tensor, fh: int, fr: int) -> torch.Tensor:
    """[Fh*Fr, N, C] -> contiguous [N, C, Fh, Fr]."""
    return spectrum.view(fh, fr, *spectrum.shape[1:]).permute(2, 3, 0, 1).contiguous()


class FFTConv2d(torch.autograd.Function):
    """conv2d(x, weight, bias, padding), stride 1, through real FFTs, with its own backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int):
        n, c_in, h, w = x.shape
        c_out, _, kh, kw = weight.shape
        fh, fw = fft_length(h + 2 * padding), fft_length(w + 2 * padding)
        oh, ow = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
        x_hat = _frequency_major(torch.fft.rfft2(F.pad(x, (padding, fw - w - padding, padding, fh - h - padding))))
        fr = fw // 2 + 1
        w_hat = torch.fft.rfft2(weight, s=(fh, fw)).permute(2, 3, 1, 0).reshape(fh * fr, c_in, c_out).contiguous()
        # cross-correlation: X * conj(W); valid outputs are free of wrap-around
        y_hat = torch.bmm(x_hat, w_hat.conj().resolve_conj())
        y = torch.fft.irfft2(_spatial_major(y_hat, fh, fr), s=(fh, fw))[..., :oh, :ow]
        ctx.save_for_backward(x_hat, w_hat)
        ctx.geometry = (padding, h, w, kh, kw, fh, fw, fr, oh, ow, bias is not None)
        return y + bias[:, None, None] if bias is not None else y.contiguous()

    @staticmethod
    def backward(ctx, grad_y):
        x_hat, w_hat = ctx.saved_tensors
        padding, h, w, kh, kw, fh, fw, fr, oh, ow, has_bias = ctx.geometry
        g_hat = _frequency_major(torch.fft.rfft2(F.pad(grad_y, (0, fw - ow, 0, fh - oh))))
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # full convolution with the kernel: G * W
            gx_hat = torch.bmm(g_hat, w_hat.transpose(1, 2))
            grad_x = torch.fft.irfft2(_spatial_major(gx_hat, fh, fr), s=(fh, fw))
            grad_x = grad_x[..., padding:padding + h, padding:padding + w]
        if ctx.needs_input_grad[1]:  # correlation of input and output gradient: sum_n X conj(G)
            gw_hat = torch.bmm(x_hat.mH, g_hat).conj()
            gw_hat = gw_hat.view(fh, fr, *gw_hat.shape[1:]).permute(3, 2, 0, 1)
            grad_w = torch.fft.irfft2(gw_hat, s=(fh, fw))[..., :kh, :kw]
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None


def agreement(maps: int, channels: int, size: int, kernel: int, padding: int) -> float:
    """Largest relative difference of output and gradients, FFT against direct, in float64."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(min(maps, 4), channels, size, size, dtype=torch.float64, generator=generator)
    weight = torch.randn(channels, channels, kernel, kernel, dtype=torch.float64, generator=generator) * 0.1
    bias = torch.randn(channels, dtype=torch.float64, generator=generator)
    results = []
    for conv in (lambda *a: F.conv2d(*a, padding=padding), lambda *a: FFTConv2d.apply(*a, padding)):
        inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
        y = conv(*inputs)
        grads = torch.autograd.grad(y, inputs, torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
        results.append((y, *grads))
    return max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(*results))


def layer_table(repeats: int) -> None:
    print("| layer | maps | float64 rel. difference | direct NCHW ms | direct channels_last ms | FFT ms "
          "| FFT speed-up |")
    print("|---|---|---|---|---|---|---|")
    cpu = torch.device("cpu")
    for name, (maps, channels, size, kernel, padding) in LAYERS.items():
        x = torch.randn(maps, channels, size, size)
        weight, bias = torch.randn(channels, channels, kernel, kernel) * 0.1, torch.randn(channels)
        out = size + 2 * padding - kernel + 1
        grad_y = torch.randn(maps, channels, out, out)
        times = {}
        for label, layout, conv in (("nchw", torch.contiguous_format, lambda *a: F.conv2d(*a, padding=padding)),
                                    ("cl", torch.channels_last, lambda *a: F.conv2d(*a, padding=padding)),
                                    ("fft", torch.contiguous_format, lambda *a: FFTConv2d.apply(*a, padding))):
            inputs = [x.contiguous(memory_format=layout).requires_grad_(),
                      weight.contiguous(memory_format=layout).requires_grad_(), bias.clone().requires_grad_()]
            grad = grad_y.contiguous(memory_format=layout)
            times[label] = statistics.median(time_calls(
                lambda: torch.autograd.grad(conv(*inputs), inputs, grad), cpu, warmup=2, repeats=repeats)) * 1e3
        best_direct = min(times["nchw"], times["cl"])
        print(f"| {name} | {maps} | {agreement(maps, channels, size, kernel, padding):.0e} | {times['nchw']:.0f} | "
              f"{times['cl']:.0f} | {times['fft']:.0f} | {best_direct / times['fft']:.2f}x |", flush=True)


def step_table(repeats: int) -> None:
    """The Tetrominoes I = 3 step (``emorl bench step``'s fast-nchw mode) with and without FFT layers."""
    from emorl.bench.step import SETTINGS, build, time_steps

    cpu = torch.device("cpu")
    size, batch = SETTINGS["tetrominoes"][0]["image_size"], SETTINGS["tetrominoes"][1]
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    print("\n| Tetrominoes I = 3 step | median s | min s |\n|---|---|---|")
    for label, encoder, decoder in (("direct (fast-nchw)", False, False), ("FFT decoder layers", False, True),
                                    ("FFT encoder layers", True, False), ("FFT both", True, True)):
        run = build("tetrominoes", "fast-nchw", cpu, images, refine_steps=3)
        layers = list(run.model.encoder.cnn[2::2]) if encoder else []  # the 64 -> 64 convolutions
        layers += list(run.model.decoder.hidden_layers[1:]) if decoder else []
        for conv in layers:
            conv.forward = lambda x, conv=conv: FFTConv2d.apply(x.contiguous(), conv.weight, conv.bias, conv.padding[0])
        times = time_steps(run, cpu, warmup=1, repeats=repeats)
        print(f"| {label} | {statistics.median(times):.3f} | {min(times):.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--step", action="store_true", help="also time the whole Tetrominoes I = 3 step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, fp32, forward + backward\n")
    layer_table(args.repeats)
    if args.step:
        step_table(max(3, args.repeats // 2))


if __name__ == "__main__":
    main()
