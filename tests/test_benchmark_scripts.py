"""The benchmark scripts' own computations (never their timings): what docs/benchmarks.md
claims of them must hold."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fft_lengths_are_even_and_7_smooth():
    fft_conv = _load("fft_conv")
    assert [fft_conv.fft_length(n) for n in (39, 41, 100, 104, 106, 11)] == [40, 42, 100, 108, 108, 12]


@pytest.mark.parametrize("kernel,padding", [(5, 1), (5, 2), (3, 0), (3, 1)])
def test_fft_convolution_is_the_same_linear_map_as_conv2d(kernel, padding):
    """Output, input and weight gradients of benchmarks/fft_conv.py's FFTConv2d against conv2d
    in float64, and its hand-written backward against finite differences."""
    fft_conv = _load("fft_conv")
    assert fft_conv.agreement(4, 6, 13, kernel, padding) < 1e-12
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(shape, dtype=torch.float64, generator=generator).requires_grad_()
              for shape in ((2, 3, 7, 9), (4, 3, kernel, kernel), (4,))]
    assert torch.autograd.gradcheck(lambda x, w, b: fft_conv.FFTConv2d.apply(x, w, b, padding), inputs)
    without_bias = fft_conv.FFTConv2d.apply(inputs[0], inputs[1], None, padding)
    torch.testing.assert_close(without_bias, F.conv2d(inputs[0], inputs[1], padding=padding))


def test_bench_step_reports_the_share_of_the_given_peak(capsys):
    """`emorl bench step --peak-tflops`: the last column is GFLOP/s over the peak of the row's precision."""
    import argparse

    from emorl.bench import step

    parser = argparse.ArgumentParser()
    step.add_arguments(parser)
    args = parser.parse_args(["--settings", "tetrominoes:0", "--modes", "fast", "fast-bf16", "--batch-size", "2",
                              "--warmup", "0", "--repeats", "1", "--peak-tflops", "fp32=0.001"])
    assert step.run(args) == 0
    rows = [line.strip("|").split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| tetro")]
    fp32_row, bf16_row = ([cell.strip() for cell in row] for row in rows)
    assert fp32_row[3] == "fast" and float(fp32_row[9]) == pytest.approx(100 * float(fp32_row[8]), abs=60)
    assert bf16_row[3] == "fast-bf16" and bf16_row[9] == "-"  # no bf16 peak given
    with pytest.raises(SystemExit, match="not PRECISION=TFLOPS"):
        step.parse_peaks(["bf16"])
    with pytest.raises(SystemExit, match="'fp16' is not one of fp32, tf32, bf16"):
        step.parse_peaks(["fp16=10"])
