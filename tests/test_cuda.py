"""The accelerator path: on a CUDA GPU the model, the optimised training step, bf16 autocast, the
trainer and evaluation agree with the CPU. Skipped where there is no CUDA GPU; on a GPU machine run
`pytest -m cuda`. EMORL_TEST_DEVICE=cpu runs the same tests against the CPU itself (a check of the
tests, not of CUDA)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

import emorl.models.gaussian as gaussian_module
from tests.noise_tape import NoiseTape
from tests.test_model import images, tiny  # the tiny configuration of the model tests

DEVICE = torch.device(os.environ.get("EMORL_TEST_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("switch", [dict(), dict(likelihood="mixture", prior="bottom_up", decoder="broadcast")])
def test_model_and_fused_step_on_the_device_equal_the_cpu(monkeypatch, switch):
    """float64, the CPU's noise replayed on the device: loss, posterior and every gradient agree,
    for the plain backward and for the trainer's fused forward_backward."""
    tape = NoiseTape()
    monkeypatch.setattr(gaussian_module, "standard_normal_like", tape)
    cpu = tiny(**switch).double()
    x = images().double()
    expected = cpu(x)
    expected.loss.backward()
    for fused in (False, True):
        tape.transform, tape.position = (lambda noise: noise.to(DEVICE)), 0
        model = copy.deepcopy(cpu).to(DEVICE)
        model.zero_grad(set_to_none=True)
        got = model.forward_backward(x.to(DEVICE)) if fused else model(x.to(DEVICE))
        if not fused:
            got.loss.backward()
        assert tape.position == len(tape.recorded)
        assert {t.device.type for t in (got.loss, got.step_weights, got.update_norms, got.nll_steps)} == {DEVICE.type}
        torch.testing.assert_close(got.loss.detach().cpu(), expected.loss.detach(), rtol=1e-10, atol=1e-8)
        torch.testing.assert_close(got.refined[-1].mean.detach().cpu(), expected.refined[-1].mean.detach(),
                                   rtol=1e-9, atol=1e-11)
        for (name, p), q in zip(cpu.named_parameters(), model.parameters()):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                scale = max(1.0, p.grad.abs().max().item())
                torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-8, atol=1e-10 * scale, msg=name)


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_fp32_on_the_device_is_ieee_and_tf32_is_not(precision, float32_flags):
    """trainer.precision=fp32 computes convolutions and matrix products in IEEE float32 on the device
    (PyTorch's default lets cuDNN convolutions use TF32): equal to the CPU to float32 rounding. tf32
    on an Ampere or newer GPU is visibly less exact (10-bit mantissa)."""
    from emorl.engine.precision import set_float32_precision

    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 64, 40, 40, generator=generator), torch.randn(64, 64, 3, 3, generator=generator) / 24
    a, b = torch.randn(512, 512, generator=generator), torch.randn(512, 512, generator=generator) / 22
    set_float32_precision(precision)  # the fixture restores the flags
    conv = torch.nn.functional.conv2d
    errors = [((got.cpu() - want).abs().max() / want.abs().max()).item() for got, want in (
        (conv(x.to(DEVICE), w.to(DEVICE)), conv(x.double(), w.double()).float()),
        ((a.to(DEVICE) @ b.to(DEVICE)), (a.double() @ b.double()).float()))]
    tensor_cores = DEVICE.type == "cuda" and torch.cuda.get_device_capability(DEVICE)[0] >= 8
    if precision == "fp32" or not tensor_cores:
        assert max(errors) < 1e-5, errors
    else:  # cuDNN may still pick a non-tensor-core kernel for one of them; at least one must show TF32
        assert max(errors) > 1e-4, errors


def test_bf16_autocast_on_the_device_follows_fp32():
    from emorl.engine.train import compute_gradients

    def gradients(precision):
        model = tiny().to(DEVICE)
        torch.manual_seed(5)
        out = compute_gradients(model, images(batch=4).to(DEVICE), 2, None, DEVICE, precision, fused=True)
        return out.loss.detach().float().cpu(), torch.cat([p.grad.flatten() for p in model.parameters()]).cpu()

    loss32, grad32 = gradients("fp32")
    loss16, grad16 = gradients("bf16")
    assert torch.isfinite(grad16).all() and not torch.equal(grad16, grad32)
    assert abs(loss16 - loss32) < 0.02 * abs(loss32) + 1.0
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.98


def test_trainer_and_evaluation_on_the_device(tmp_path):
    """Three bf16 steps of the smoke setting on the device; `emorl evaluate` on the device repeats the
    trainer's test metrics, and the checkpoint also loads and evaluates on the CPU."""
    import math

    from emorl.config import compose
    from emorl.engine import checkpoint as ckpt
    from emorl.engine.evaluation_run import run_evaluation
    from emorl.engine.train import train

    cfg = compose(["experiment=smoke", "trainer.max_steps=3", "trainer.progress=false", f"trainer.device={DEVICE}",
                   "trainer.precision=bf16", "tracking.backend=none", f"trainer.output_dir={tmp_path / 'run'}"])
    result = train(cfg)
    state = ckpt.load(result.checkpoint, map_location="cpu")
    assert state["step"] == 3 and all(v.device.type == "cpu" for v in state["model"].values())
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    on_device = run_evaluation(result.checkpoint, num_images=16, batch_size=16, device=str(DEVICE), no_tracking=True)
    # bf16 (8 mantissa bits), and the trainer evaluates in channels_last: equal to rounding, and an
    # argmax flipped at a few slot boundaries for the ARI
    for name, tolerance in (("mse", dict(rel=5e-3)), ("kl", dict(rel=5e-3)), ("fg_ari", dict(abs=0.01))):
        assert on_device[f"eval/tetrominoes/I1/{name}"] == pytest.approx(result.metrics[f"test/{name}"],
                                                                          **tolerance), name
    on_cpu = run_evaluation(result.checkpoint, num_images=16, batch_size=16, device="cpu", no_tracking=True)
    assert all(math.isfinite(v) for v in on_cpu.values()) and 0 <= on_cpu["eval/tetrominoes/I1/fg_ari"] <= 1
