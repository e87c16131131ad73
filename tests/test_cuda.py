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


# -- the CUDA-graph training step and the sync-free trainer (issue 14) -------------------------------
def _graph_and_eager(model_kind: str, steps: int = 9):
    """Two copies of a tiny model trained for ``steps`` steps with the same noise: one replaying the
    step as a CUDA graph, one eager. GECO's warm start ends at step 3, I goes 2 -> 1 at step 5, and
    step 7 has a smaller batch (a new key each time: eager warm-up, then a new capture)."""
    from emorl.engine.step import TrainingStep, make_optimizer
    from emorl.geco import GECO
    from emorl.models import build_model
    from tests.test_step import Optim, lr_at

    configs = {
        "efficient_morl": dict(name="efficient_morl", image_size=16, num_slots=3, latent_dim=8, encoder_channels=16,
                               decoder="broadcast_light", sigma=0.3, stochastic_layers=2, refine_steps=2),
        "slot_attention": dict(name="slot_attention", image_size=16, num_slots=3, slot_dim=8, encoder_channels=16,
                               mlp_hidden=16, decoder="broadcast_light"),
        "slot_mlp": dict(name="slot_mlp", image_size=16, num_slots=3, slot_dim=8, encoder_channels=16,
                         decoder="broadcast_light"),
        "iodine": dict(name="iodine", image_size=16, num_slots=3, latent_dim=8, refine_steps=2,
                       decoder="broadcast_light", refine_channels=16, refine_mlp=[32], lstm_hidden=16),
    }
    from tests.test_sequential_models import TINY as SEQUENTIAL

    configs.update({name: dict(name=name, **SEQUENTIAL[name]) for name in ("monet", "genesis")})
    runs = {}
    for graph in (True, False):
        torch.manual_seed(0)
        model = build_model(configs[model_kind]).to(DEVICE).to(memory_format=torch.channels_last)
        geco = GECO(-2000.0, step_size=1e-3, warm_start=3, device=DEVICE) if model_kind == "efficient_morl" else None
        step = TrainingStep(model, make_optimizer(model, Optim, DEVICE), lr_at, device=DEVICE, clip_norm=5.0,
                            geco=geco, cuda_graph=graph)
        step.start_at(0)
        torch.manual_seed(1)
        means = []
        for index in range(steps):
            batch = 2 if index == 7 else 4
            x = images(batch=batch, seed=index).to(DEVICE).contiguous(memory_format=torch.channels_last)
            step(x, index, 2 if index < 5 else 1)
            means.append(step.read_interval())
        runs[graph] = (model, step, means, geco)
    return runs


@pytest.mark.parametrize("model_kind", ["efficient_morl", "slot_attention", "slot_mlp", "iodine", "monet", "genesis"])
def test_the_cuda_graph_step_computes_the_eager_step(model_kind):
    """Replayed steps give the eager steps' losses and parameters, across GECO's warm start, a change
    of I and a smaller batch; the replays draw the same noise as the eager steps."""
    if DEVICE.type != "cuda":
        pytest.skip("CUDA graphs need a CUDA GPU")
    runs = _graph_and_eager(model_kind)
    (graphed, step, means, geco), (eager, _, eager_means, eager_geco) = runs[True], runs[False]
    assert step.graph_failure is None and step.captures >= 2 and step.replays >= 2, (step.captures, step.replays)
    for mine, theirs in zip(means, eager_means):
        assert mine.keys() == theirs.keys()
        for name in theirs:
            assert mine[name] == pytest.approx(theirs[name], rel=1e-4, abs=1e-5), name
    # The losses above are the sharp check. Parameters: float rounding (another cuBLAS workspace on the
    # warm-up stream, say) can flip the sign of a gradient that is zero in exact arithmetic (a softmax's
    # shift invariance: mask-logit and LayerNorm biases), which Adam turns into a step of ~lr (4e-4);
    # a replay that skipped the optimiser or read stale inputs would be off by several steps everywhere.
    for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=8e-4, msg=name)
    differing = sum(int((p != q).sum()) for p, q in zip(eager.parameters(), graphed.parameters()))
    print(f"{model_kind}: {differing} of {sum(p.numel() for p in eager.parameters())} parameters differ at all")
    if geco is not None:
        assert geco.state_dict()["zeta"] == pytest.approx(eager_geco.state_dict()["zeta"], rel=1e-6)


def test_the_training_step_and_the_device_batches_never_wait_for_the_host(tmp_path):
    """With CUDA's sync debug mode set to error, steady-state steps (graph replays and eager steps)
    and the on-device batches run without a single host synchronisation."""
    if DEVICE.type != "cuda":
        pytest.skip("the sync debug mode is CUDA's")
    from emorl.data.generate.common import generate
    from emorl.data.hdf5 import MultiObjectDataset
    from emorl.engine.data import DeviceBatches
    from emorl.engine.step import TrainingStep, make_optimizer
    from emorl.geco import GECO
    from tests.test_step import Optim, lr_at

    path = generate("tetrominoes", tmp_path / "t.h5", seed=0, sizes={"train": 12, "test": 2}, workers=1,
                    progress=False)
    batches = iter(DeviceBatches(MultiObjectDataset(path, "train"), 4, seed=0, start_batch=0, device=DEVICE))
    for graph in (True, False):
        model = tiny(image_size=35).to(DEVICE).to(memory_format=torch.channels_last)
        step = TrainingStep(model, make_optimizer(model, Optim, DEVICE), lr_at, device=DEVICE, clip_norm=5.0,
                            geco=GECO(-2000.0, warm_start=0, device=DEVICE), cuda_graph=graph)
        for index in range(4):  # two eager warm-up steps, the capture, a replay
            step(next(batches)["image"], index + 1, 2)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for index in range(4, 10):  # crosses an epoch boundary of the batches (3 per epoch)
                step(next(batches)["image"], index + 1, 2)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert step.first_non_finite() is None and int(step.step_counter) == 10
        assert (step.replays >= 7) == graph


def _smoke(tmp_path, name, *overrides):
    from emorl.config import compose

    return compose(["experiment=smoke", "trainer.progress=false", "tracking.backend=none", "loss=geco",
                    "loss.geco.target=-3000", "loss.geco.warm_start=2", "trainer.max_steps=7",
                    "trainer.eval_every=4", "trainer.checkpoint_every=4", f"trainer.output_dir={tmp_path / name}",
                    *overrides])


def test_the_trainer_on_the_device_trains_what_it_trains_on_the_cpu(tmp_path):
    """fp32 (IEEE) on the device with the graph and the on-device data: the CPU run's parameters,
    GECO state and test metrics to float32 tolerance; the device's checkpoint resumes on the CPU."""
    from emorl.engine import checkpoint as ckpt
    from emorl.engine.train import train

    on_device = train(_smoke(tmp_path, "device", f"trainer.device={DEVICE}"))
    on_cpu = train(_smoke(tmp_path, "cpu", "trainer.device=cpu"))
    a, b = ckpt.load(on_cpu.checkpoint), ckpt.load(on_device.checkpoint)
    for key in a["model"]:  # within two Adam steps (see test_the_cuda_graph_step_computes_the_eager_step)
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-3, atol=8e-4, msg=key)
    assert b["geco"]["zeta"] == pytest.approx(a["geco"]["zeta"], rel=1e-6)
    assert all(isinstance(g["lr"], float) and not g["capturable"] for g in b["optimizer"]["param_groups"])
    for key, value in on_cpu.metrics.items():
        assert on_device.metrics[key] == pytest.approx(value, rel=2e-3, abs=2e-3), key
    resumed = train(_smoke(tmp_path, "device", "trainer.device=cpu", "trainer.max_steps=9"))
    assert resumed.step == 9


def test_a_nan_on_the_device_stops_the_run_at_its_step_and_keeps_a_finite_checkpoint(tmp_path, monkeypatch):
    from emorl.engine import checkpoint as ckpt
    from emorl.engine.train import train
    from emorl.errors import TrainingError
    from emorl.models.emorl import EfficientMORL

    original = EfficientMORL.forward_backward
    calls = {"n": 0}

    def forward_backward(self, *args, **kwargs):  # poisons the 6th call: training step 5 (eager, before capture)
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 6:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(EfficientMORL, "forward_backward", forward_backward)
    cfg = _smoke(tmp_path, "nan", f"trainer.device={DEVICE}", "loss=elbo", "trainer.max_steps=12",
                 "trainer.eval_every=100", "trainer.log_every=100", "trainer.cuda_graph=false")
    with pytest.raises(TrainingError, match=r"at training step 5: .*loss=nan"):
        train(cfg)
    state = ckpt.load(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values()
                                      if v.is_floating_point())


def test_a_nan_inside_a_replayed_graph_is_caught_too(tmp_path):
    """A weight made NaN after the checkpoint of step 4 (the step is a graph replay by then): the
    run stops at the next check naming step 4, and the checkpoint of step 4 stays finite."""
    from emorl.engine import checkpoint as ckpt
    from emorl.engine.train import Trainer, TrainingHooks
    from emorl.errors import TrainingError

    class Poison(TrainingHooks):
        def __init__(self):
            self.trainer = None

        def on_checkpoint(self, step, path, metrics):
            if step == 4:
                next(self.trainer.model.parameters()).data.fill_(float("nan"))

    hooks = Poison()
    trainer = Trainer(_smoke(tmp_path, "nan", f"trainer.device={DEVICE}", "loss=elbo", "trainer.max_steps=12",
                             "trainer.eval_every=100", "trainer.log_every=100"), hooks)
    hooks.trainer = trainer
    with pytest.raises(TrainingError, match=r"at training step 4: .*loss=nan"):
        trainer.run()
    if DEVICE.type == "cuda":
        assert trainer.training_step.replays >= 4 and trainer.training_step.graph_failure is None
    state = ckpt.load(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values()
                                      if v.is_floating_point())
