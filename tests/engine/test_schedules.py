"""Learning-rate policies: the one-cycle shape (MONAI's WarmupCosineSchedule) and the reference's constant rate."""

import pytest
import torch

from scripts.engine.schedules import budget_lr_scheduler


def _lrs(policy: str, total: int) -> list[float]:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    sched = budget_lr_scheduler(opt, total, policy=policy, warmup_fraction=0.2, final_factor=0.01)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_one_cycle_warms_up_peaks_and_decays():
    lrs = _lrs("one_cycle", 50)
    peak = lrs.index(max(lrs))
    assert lrs[0] == pytest.approx(2e-4)
    assert peak == 10 and max(lrs) == pytest.approx(2e-3)
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(lrs[peak:-1], lrs[peak + 1 :], strict=True))
    assert lrs[-1] == pytest.approx(2e-5)


def test_constant_policy_is_the_reference_rate():
    assert _lrs("constant", 7) == [2e-3] * 7


def test_schedule_state_resumes_the_same_rates():
    """The scheduler's state_dict (part of the training checkpoint) restores the rate sequence exactly."""
    full = _lrs("one_cycle", 30)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    sched = budget_lr_scheduler(opt, 30, policy="one_cycle", warmup_fraction=0.2, final_factor=0.01)
    for _ in range(12):
        opt.step()
        sched.step()
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    sched2 = budget_lr_scheduler(opt2, 30, policy="one_cycle", warmup_fraction=0.2, final_factor=0.01)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    rest = []
    for _ in range(18):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert rest == pytest.approx(full[12:])


def test_bad_arguments_are_refused():
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="unknown lr policy"):
        budget_lr_scheduler(sgd, 10, policy="cosine")
    with pytest.raises(ValueError, match="total_steps"):
        budget_lr_scheduler(sgd, 0)
