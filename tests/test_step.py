"""The training step on device-resident state (emorl.engine.step) and the on-device batches, on the
CPU: the same numbers as the plain loop the trainer ran before (bit for bit), sums read once per
interval, the first non-finite step remembered, checkpointed optimiser state that loads anywhere.
The CUDA graph path itself is tested in tests/test_cuda.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from emorl.engine.data import DeviceBatches, train_loader, use_device_batches
from emorl.engine.schedule import learning_rate_factor
from emorl.engine.step import (TrainingStep, compute_gradients, load_optimizer_state, make_optimizer,
                               optimizer_state)
from emorl.errors import ConfigError
from emorl.geco import GECO, ELBOObjective, GECOObjective
from tests.test_model import images, tiny

CPU = torch.device("cpu")


class Optim:  # the optim section of the config, as make_optimizer reads it
    lr, betas, eps, implementation = 4e-4, (0.9, 0.999), 1e-8, "foreach"


def lr_at(step: int) -> float:
    return Optim.lr * learning_rate_factor(step, 3, 0.5, 10, "warmup_end")


def plain_loop(model, batches, refine_steps, target, warm_start):
    """The trainer's step as it was before emorl.engine.step: Adam with a LambdaLR, GECO's state in
    Python floats read back after every step, every scalar copied to the host."""
    optimizer = torch.optim.Adam(model.parameters(), lr=Optim.lr, foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, 3, 0.5, 10, "warmup_end"))
    zeta, c_ema, logged = 0.55, None, []
    for step, (x, steps) in enumerate(zip(batches, refine_steps)):
        torch.manual_seed(1000 + step)
        optimizer.zero_grad(set_to_none=True)
        if step < warm_start:
            objective = ELBOObjective()
        else:
            multiplier = float(F.softplus(torch.tensor(zeta, dtype=torch.float64)))
            objective = GECOObjective(target, multiplier, c_ema)
        out = compute_gradients(model, x, steps, objective, CPU)
        scalars = {k: float(v) for k, v in out.scalars().items()}
        scalars["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0))
        optimizer.step()
        scheduler.step()
        if step >= warm_start:
            constraint = target - scalars["nll"]
            c_ema = constraint if c_ema is None else 0.99 * c_ema + (1.0 - 0.99) * constraint
            rate = 1e-3 * (1.0 if c_ema > 0 else 1.0)
            zeta = max(0.55, zeta - rate * c_ema)
        logged.append(scalars)
    return optimizer, {"zeta": zeta, "c_ema": c_ema}, logged


@pytest.mark.parametrize("target", [-2000.0, 1e6], ids=["constraint-violated", "constraint-met"])
def test_the_step_on_the_cpu_equals_the_plain_loop_bit_for_bit(target):
    """Warm start, GECO's first update and later ones, a change of I, the learning-rate warm-up and
    decay: parameters, Adam's state, GECO's state and every logged scalar equal the plain loop's."""
    model = tiny()
    reference = copy.deepcopy(model)
    batches = [images(batch=3, seed=s) for s in range(7)]
    refine_steps = [2, 2, 2, 2, 1, 1, 1]
    warm_start = 2
    optimizer_ref, geco_ref, logged = plain_loop(reference, batches, refine_steps, target, warm_start)

    geco = GECO(target, step_size=1e-3, warm_start=warm_start)
    optimizer = make_optimizer(model, Optim, CPU)
    step = TrainingStep(model, optimizer, lr_at, device=CPU, clip_norm=5.0, geco=geco)
    assert not step.use_graph  # no CUDA graph on the CPU
    step.start_at(0)
    read = []
    for index, (x, steps) in enumerate(zip(batches, refine_steps)):
        torch.manual_seed(1000 + index)
        step(x, index, steps)
        read.append(step.read_interval())
    for (name, p), q in zip(reference.named_parameters(), model.parameters()):
        assert torch.equal(p, q), name
    for p, q in zip(reference.parameters(), model.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer_ref.state[p][key], optimizer.state[q][key]), key
    assert geco.state_dict() == geco_ref  # float64 on the device, the host's arithmetic exactly
    for mine, theirs in zip(read, logged):
        for name, value in theirs.items():  # a float32 sum of one step is the step's value
            assert mine[name] == value or math.isnan(value) and math.isnan(mine[name]), name
    assert "geco_c_ema" not in read[warm_start - 1] and "geco_c_ema" in read[warm_start]
    assert read[-1]["geco_zeta"] == pytest.approx(geco_ref["zeta"], rel=1e-7)
    assert step.first_non_finite() is None and int(step.step_counter) == len(batches)


def test_interval_means_and_the_first_non_finite_step(monkeypatch):
    """read_interval averages over the steps since the last read (per scalar); a non-finite loss is
    remembered with its step and scalars, and later finite steps do not erase it."""
    from emorl.models.emorl import EfficientMORL

    model = tiny()
    step = TrainingStep(model, make_optimizer(model, Optim, CPU), lr_at, device=CPU, clip_norm=None)
    step.start_at(10)
    losses = []
    for index in range(3):
        torch.manual_seed(index)
        step(images(batch=2, seed=index), 10 + index, 2)
        losses.append(step._intervals[next(iter(step._intervals))].total[0].item() - sum(losses))
    means = step.read_interval()
    assert means["loss"] == pytest.approx(sum(losses) / 3, rel=1e-6)
    assert step.read_interval() == {}  # reset
    original = EfficientMORL.forward_backward

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(EfficientMORL, "forward_backward", poisoned)
    step(images(batch=2), 13, 2)
    monkeypatch.setattr(EfficientMORL, "forward_backward", original)
    step(images(batch=2), 14, 2)
    found = step.first_non_finite()
    assert found is not None and found[0] == 13
    assert math.isnan(found[1]["loss"]) and math.isfinite(found[1]["nll"])


def test_optimizer_state_is_portable():
    """Checkpointed Adam state carries float learning rates and no device settings; it loads into
    an optimiser whose learning rate is a tensor (as on CUDA) and fills that tensor."""
    model = tiny()
    optimizer = make_optimizer(model, Optim, CPU)
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.param_groups[0]["lr"] = 1.5e-4
    optimizer.step()
    saved = optimizer_state(optimizer)
    assert saved["param_groups"][0]["lr"] == 1.5e-4 and saved["param_groups"][0]["capturable"] is False
    other = make_optimizer(tiny(), Optim, CPU)
    lr = torch.tensor(0.0)
    other.param_groups[0]["lr"] = lr  # as make_optimizer makes it on CUDA
    load_optimizer_state(other, saved)
    assert other.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(1.5e-4)
    first = next(iter(optimizer.state.values()))
    assert torch.equal(next(iter(other.state.values()))["exp_avg"], first["exp_avg"])
    older = optimizer.state_dict()  # an older checkpoint: a LambdaLR's initial_lr in the groups
    older["param_groups"][0]["initial_lr"] = 4e-4
    load_optimizer_state(other, older)
    assert "initial_lr" not in other.param_groups[0]


def test_the_warm_up_from_zero_is_the_authors_schedule():
    """optim.warmup_from_zero: lr = base * t / W (their GradualWarmupScheduler, 0 at the first step);
    ours by default (t + 1) / W; both the same decay after the warm-up."""
    ours = [learning_rate_factor(t, 4, 0.5, 100, "warmup_end") for t in range(6)]
    theirs = [learning_rate_factor(t, 4, 0.5, 100, "warmup_end", warmup_from_zero=True) for t in range(6)]
    assert theirs[:5] == [0.0, 0.25, 0.5, 0.75, 1.0] and ours[:4] == [0.25, 0.5, 0.75, 1.0]
    assert ours[4:] == theirs[4:] == [1.0, 0.5 ** (1 / 100)]


@pytest.fixture(scope="module")
def tetrominoes_file(tmp_path_factory):
    from emorl.data.generate.common import generate

    return generate("tetrominoes", tmp_path_factory.mktemp("data") / "t.h5", seed=0,
                    sizes={"train": 20, "test": 4}, workers=1, progress=False)


@pytest.mark.parametrize("start_batch", [0, 7])
def test_device_batches_are_the_loaders_batches_bit_for_bit(tetrominoes_file, start_batch):
    """The whole split held as uint8 and gathered per batch gives the DataLoader's images exactly,
    in the same order, across an epoch boundary and from a resumed position."""
    from emorl.data.hdf5 import MultiObjectDataset

    dataset = MultiObjectDataset(tetrominoes_file, "train")
    loader = iter(train_loader(dataset, 6, seed=3, start_batch=start_batch))
    gathered = iter(DeviceBatches(dataset, 6, seed=3, start_batch=start_batch, device=CPU))
    for _ in range(8):  # 3 batches per epoch: crosses two epoch boundaries
        expected, got = next(loader)["image"], next(gathered)["image"]
        assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(got, expected)


def test_on_device_data_is_chosen_only_where_it_can_be(tetrominoes_file):
    from emorl.data.hdf5 import MultiObjectDataset

    dataset = MultiObjectDataset(tetrominoes_file, "train")
    assert not use_device_batches("auto", dataset, CPU) and not use_device_batches("false", dataset, CPU)
    with pytest.raises(ConfigError, match="data.on_device=true, but .* the device is cpu"):
        use_device_batches("true", dataset, CPU)
    resized = MultiObjectDataset(tetrominoes_file, "train", image_size=16)
    assert not resized.stored_as_returned and dataset.stored_as_returned
