"""The training-loop scaffold (factory.train.loop): schedules, budget, loss record, threads, batches."""

import logging
import math

import pytest
import torch
from torch import nn

from factory.train.loop import (
    Loop,
    count_parameters,
    ema_update,
    one_cycle,
    optimize,
    permutation_batches,
    seeded,
    torch_threads,
    warmup_lr,
)


def test_warmup_then_constant():
    assert [warmup_lr(1e-3, s, 4) for s in (1, 2, 4, 5, 100)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    assert warmup_lr(1e-3, 4, 4) == 1e-3 * 4 / 4
    assert warmup_lr(1e-3, 1, 0) == 1e-3  # no warm-up
    # the two roundings of the warm-up are kept apart (the generator's and the others'): bit-exact formulas
    assert warmup_lr(1e-3, 1, 3) == 1e-3 * 1 / 3 and warmup_lr(1e-3, 1, 3, ratio_first=True) == 1e-3 * (1 / 3)
    assert any(warmup_lr(1e-3, s, 100) != warmup_lr(1e-3, s, 100, ratio_first=True) for s in range(1, 101))
    with pytest.raises(ValueError, match="constant or cosine"):
        warmup_lr(1e-3, 5, 0, decay="linear")


def test_cosine_decay():
    lr = [warmup_lr(1e-3, s, 10, decay="cosine", total_steps=100) for s in (5, 10, 11, 55, 100)]
    assert lr[0] == pytest.approx(5e-4) and lr[1] == pytest.approx(1e-3)
    assert lr[2] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 90)))
    assert lr[3] == pytest.approx(5e-4) and lr[4] == pytest.approx(0.0, abs=1e-12)
    assert warmup_lr(1e-3, 1, 0, decay="cosine", total_steps=1) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi)))


def test_clip_and_contrastive_schedules_use_it():
    from factory.config import ClipTrainConfig
    from factory.train.clip import learning_rate

    cfg = ClipTrainConfig(steps=100, warmup_steps=10, lr=1e-3, lr_schedule="cosine")
    assert [learning_rate(cfg, s) for s in range(1, 101)] == \
        [warmup_lr(1e-3, s, 10, decay="cosine", total_steps=100) for s in range(1, 101)]


def test_budget_progress_and_final_loss_window():
    seen = []
    loop = Loop("t", 5, progress=lambda s, n, loss: seen.append((s, n, loss)))
    for step in loop:
        loop.record(torch.tensor(float(step)))
    assert loop.step == 5 and not loop.stopped_early and loop.seconds is not None
    assert seen == [(s, 5, float(s)) for s in range(1, 6)]
    assert loop.losses == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert loop.final_loss(2) == 4.5 and loop.final_loss(50) == 3.0  # a window longer than the run: all steps
    assert loop.curve(2) == [1.5, 3.5, 5.0]
    summary = loop.summary()
    assert list(summary) == ["steps", "stopped_early", "seconds", "seconds_per_step"]
    assert summary["steps"] == 5 and summary["stopped_early"] is False
    assert loop.record(0.25, step=9) == 0.25 and seen[-1] == (9, 5, 0.25)


def test_time_limit_stops_after_a_step_but_never_after_the_last(caplog):
    loop = Loop("train_x", 10, max_seconds=1e-9)
    with caplog.at_level(logging.WARNING):
        assert list(loop) == [1]
    assert loop.stopped_early and loop.summary()["steps"] == 1
    assert "train_x: stopping after 1 of 10 steps (max_seconds=1e-09)" in caplog.text
    one = Loop("one", 1, max_seconds=1e-9)
    assert list(one) == [1] and not one.stopped_early


def test_permutation_batches_draw_like_consecutive_epochs():
    batches = permutation_batches(5, 3, torch.Generator().manual_seed(0))
    got = torch.cat([next(batches) for _ in range(5)])  # 15 indices: exactly 3 epochs
    gen = torch.Generator().manual_seed(0)
    expected = torch.cat([torch.randperm(5, generator=gen) for _ in range(3)])
    assert torch.equal(got, expected)
    assert all(sorted(got[i:i + 5].tolist()) == list(range(5)) for i in (0, 5, 10))


def test_seeded_leaves_the_global_rng_and_threads_are_restored():
    state = torch.get_rng_state()
    with seeded(3):
        a = torch.rand(2)
    assert torch.equal(state, torch.get_rng_state())
    with seeded(3):
        assert torch.equal(a, torch.rand(2))
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_optimize_one_cycle_ema_and_count_parameters():
    model = nn.Linear(2, 1)
    assert count_parameters(model) == 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = one_cycle(opt, 0.5, 10)
    optimize(opt, model(torch.ones(1, 2)).sum(), lr=0.2)
    assert opt.param_groups[0]["lr"] == 0.2
    optimize(opt, model(torch.ones(1, 2)).sum(), scheduler=sched)
    assert sched.last_epoch == 1
    ema, params = [torch.zeros(3)], [torch.ones(3)]
    ema_update(ema, params, 1, 0.999)  # decay 1 / 10: the average moves 90% of the way
    assert torch.allclose(ema[0], torch.full((3,), 0.9))
    ema_update(ema, params, 10**6, 0.5)  # decay capped at max_decay
    assert torch.allclose(ema[0], torch.full((3,), 0.95))
