"""GECO: the update rule step by step, its loss, its state, and the unreachable-target warning."""

import math

import pytest
import torch
import torch.nn.functional as F

from emorl.geco import GECO, ELBOObjective, GECOObjective, GECOState, check_target_reachable


def test_warm_start_uses_the_plain_elbo_and_updates_nothing():
    geco = GECO(target=-100.0, warm_start=3)
    for step in range(3):
        assert isinstance(geco.objective(step), ELBOObjective)
        geco.update(nll=50.0, step=step)
    assert geco.state_dict() == {"zeta": 0.55, "c_ema": None}
    assert isinstance(geco.objective(3), GECOObjective)


def test_update_rule_step_by_step():
    geco = GECO(target=-100.0, step_size=1e-3, ema=0.5, warm_start=0, speedup=10.0)
    nlls = [50.0, 20.0, -150.0, -300.0, -300.0]
    zeta, c_ema = 0.55, None
    for step, nll in enumerate(nlls):
        geco.update(nll, step)
        constraint = -100.0 - nll
        c_ema = constraint if c_ema is None else 0.5 * c_ema + 0.5 * constraint
        rate = 1e-3 * (10.0 if c_ema > 0 else 1.0)
        zeta = max(0.55, zeta - rate * c_ema)
        assert geco.state.c_ema == pytest.approx(c_ema)
        assert geco.state.zeta == pytest.approx(zeta)
    # The constraint was violated first (zeta grew), then met (zeta fell back to its floor 0.55).
    assert geco.state.zeta == pytest.approx(0.55)


def test_the_authors_timing_moves_zeta_from_the_step_after_the_warm_start():
    """zeta_at_first_update=False: the first update (step warm_start) only sets C_ema, as the authors'
    loop does; from the next step both move as usual."""
    ours, theirs = (GECO(target=-100.0, step_size=1e-3, warm_start=2, zeta_at_first_update=flag) for flag in (True, False))
    for geco in (ours, theirs):
        geco.update(nll=0.0, step=2)
    assert theirs.state == GECOState(zeta=0.55, c_ema=-100.0)
    assert ours.state.zeta == pytest.approx(0.55 + 1e-3 * 100.0)
    theirs.update(nll=0.0, step=3)
    assert theirs.state.zeta == pytest.approx(0.55 + 1e-3 * 100.0) and theirs.state.c_ema == pytest.approx(-100.0)


def test_zeta_grows_while_the_constraint_is_violated():
    geco = GECO(target=-100.0, step_size=1e-3, warm_start=0)
    for step in range(5):
        geco.update(nll=0.0, step=step)  # C - nll = -100 < 0
    assert geco.state.zeta == pytest.approx(0.55 + 5 * 1e-3 * 100.0)
    assert geco.multiplier == pytest.approx(math.log1p(math.exp(geco.state.zeta)))
    assert GECO(target=0.0).multiplier >= 1.0  # softplus(0.55) ~ 1.0055


def test_loss_value_uses_c_ema_and_gradient_is_kl_plus_multiplier_times_nll():
    nll = torch.tensor(30.0, requires_grad=True)
    kl = torch.tensor(5.0, requires_grad=True)
    objective = GECOObjective(target=-10.0, multiplier=2.0, c_ema=-7.0, kl_beta=1.0)
    loss = objective(nll, kl)
    assert loss.item() == pytest.approx(5.0 - 2.0 * -7.0)
    loss.backward()
    assert nll.grad.item() == pytest.approx(2.0) and kl.grad.item() == pytest.approx(1.0)
    first = GECOObjective(target=-10.0, multiplier=2.0, c_ema=None)  # no C_ema yet: C - nll itself
    assert first(torch.tensor(30.0), torch.tensor(5.0)).item() == pytest.approx(5.0 + 2.0 * 40.0)


def test_state_round_trips_through_a_checkpoint():
    geco = GECO(target=-100.0, warm_start=0)
    for step in range(4):
        geco.update(nll=step * 10.0, step=step)
    restored = GECO(target=-100.0, warm_start=0)
    restored.load_state_dict(geco.state_dict())
    assert restored.state == geco.state
    geco.update(1.0, 5)
    restored.update(1.0, 5)
    assert restored.state == geco.state


def test_unreachable_targets_warn():
    # The paper's Tetrominoes setting: C = -4500 over 35 * 35 * 3 elements at sigma 0.3.
    with pytest.warns(UserWarning, match="can never be met"):
        message = check_target_reachable(-4500.0, 35 * 35 * 3, 0.3)
    assert "-1.2245 per element" in message
    # CLEVR6: C = -61000 over 96 * 96 * 3 elements at sigma 0.1 is reachable.
    assert check_target_reachable(-61000.0, 96 * 96 * 3, 0.1) is None
    assert F.softplus(torch.tensor(0.55)).item() > 1.0
