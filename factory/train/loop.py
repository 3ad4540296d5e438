"""The training-loop scaffold the trainers share.

Each trainer keeps its own step body (what a batch is, what the loss is); what is here is what they all
do around it: the model initialised from a seed without touching the caller's RNG, batches from
consecutive random permutations, the learning rate (linear warm-up, then constant, cosine or one-cycle),
the optimiser update, the EMA of the weights, torch's thread count, the step budget with an optional time
limit, the loss record (first loss, final-loss window, loss curve) and the progress callback.

Every helper draws from the generator it is given in the same order, and computes with the same
arithmetic, as the code it replaced: trained weights keep their bytes.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

# ``progress(step, total, loss)``, called after every optimisation step (e.g. to drive a bar)
Progress = Callable[[int, int, float], None]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's global CPU RNG seeded with ``seed`` inside the block, and restored after it (the caller's
    global RNG is left as it was): for initialising weights, or for dropout draws."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block (None: leave it), the caller's count after it."""
    caller_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        yield
    finally:
        torch.set_num_threads(caller_threads)


def warmup_lr(lr: float, step: int, warmup_steps: int, *, decay: str = "constant", total_steps: int = 0,
              ratio_first: bool = False) -> float:
    """The learning rate of ``step`` (1-based): a linear warm-up over ``warmup_steps`` (0: none), then
    constant (``decay="constant"``) or a cosine decay to 0 at ``total_steps`` (``decay="cosine"``).

    The warm-up value is ``lr * step / warmup_steps``; ``ratio_first`` computes it as
    ``lr * (step / warmup_steps)`` instead (the embedded generator's rounding, kept so its weights keep
    their bytes)."""
    if warmup_steps and step <= warmup_steps:
        return lr * (step / warmup_steps) if ratio_first else lr * step / warmup_steps
    if decay == "cosine":
        done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return lr * 0.5 * (1.0 + math.cos(math.pi * done))
    if decay != "constant":
        raise ValueError(f"decay must be constant or cosine; got {decay!r}")
    return lr


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, total_steps: int,
              pct_start: float = 0.15) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's one-cycle schedule (warm-up to ``lr`` over ``pct_start`` of the steps, then cosine annealing)."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=pct_start)


def optimize(optimizer: torch.optim.Optimizer, loss: torch.Tensor, *, lr: float | None = None,
             scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    """One update: set every parameter group's learning rate to ``lr`` (if given), back-propagate
    ``loss``, step the optimiser, then ``scheduler`` (if given)."""
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def ema_update(ema_params: Sequence[torch.Tensor], params: Sequence[torch.Tensor], step: int,
               max_decay: float) -> None:
    """EMA of the weights after update ``step``: decay ``min(max_decay, step / (9 + step))``, i.e.
    ``(1 + t) / (10 + t)`` with ``t`` the updates before this one."""
    decay = min(max_decay, step / (9 + step))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema_params), list(params), 1.0 - decay)


def permutation_batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of ``batch_size`` indices into ``n`` items, cut from consecutive random
    permutations of ``0..n-1`` (epochs; a batch may span two). A permutation is drawn from ``gen`` only
    when the remaining indices do not fill the next batch."""
    order = torch.empty(0, dtype=torch.long)
    while True:
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        idx, order = order[:batch_size], order[batch_size:]
        yield idx


class Loop:
    """The step budget and loss record of a training run.

    Iterating gives the steps ``1..steps``; if ``max_seconds`` is set and that much wall time has passed
    when a step ends (and it is not the last), the loop logs a warning and stops: ``stopped_early``.
    :meth:`record` keeps each step's loss and calls ``progress``. Times count from construction.
    """

    def __init__(self, name: str, steps: int, *, max_seconds: float | None = None, progress: Progress | None = None,
                 logger: logging.Logger | None = None) -> None:
        self.name, self.steps, self.max_seconds, self.progress = name, steps, max_seconds, progress
        self.log = logger or log
        self.losses: list[float] = []
        self.step = 0
        self.stopped_early = False
        self.seconds: float | None = None  # wall time of the loop, set when it ends
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def cpu_elapsed(self) -> float:
        """CPU time of all threads since the start (wall / CPU time shows contention on a shared machine)."""
        return time.process_time() - self.cpu_start

    def __iter__(self) -> Iterator[int]:
        for step in range(1, self.steps + 1):
            self.step = step
            yield step
            if self.max_seconds is not None and self.elapsed() >= self.max_seconds and step < self.steps:
                self.log.warning("%s: stopping after %d of %d steps (max_seconds=%s)", self.name, step, self.steps,
                                 self.max_seconds)
                self.stopped_early = True
                break
        self.seconds = self.elapsed()

    def record(self, loss: torch.Tensor | float, step: int | None = None) -> float:
        """Keep the loss of ``step`` (default: the current one) and report it to ``progress``."""
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        self.losses.append(value)
        if self.progress is not None:
            self.progress(self.step if step is None else step, self.steps, value)
        return value

    def final_loss(self, window: int) -> float:
        """The mean loss of the last ``window`` steps (one step's loss is noisy)."""
        return float(np.mean(self.losses[-window:]))

    def curve(self, every: int) -> list[float]:
        """The mean loss of every ``every`` consecutive steps, rounded to 4 digits."""
        return [round(float(np.mean(self.losses[i:i + every])), 4) for i in range(0, len(self.losses), every)]

    def summary(self) -> dict[str, object]:
        """Steps done, whether the time limit stopped the loop, seconds and seconds per step (rounded)."""
        seconds = self.elapsed() if self.seconds is None else self.seconds
        return {"steps": self.step, "stopped_early": self.stopped_early, "seconds": round(seconds, 2),
                "seconds_per_step": round(seconds / max(self.step, 1), 4)}
