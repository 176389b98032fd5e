"""The learning-rate schedule: linear warm-up, then a cosine decay over the run's steps or, when
the run is bounded by time (`trainer.max_time`), over its time budget: the wall-time schedule
survives resuming, since Lightning's Timer restores the time already spent."""

from __future__ import annotations

import math

from lightning.pytorch.callbacks import Timer


def _timer(trainer) -> Timer | None:
    return next((c for c in trainer.callbacks if isinstance(c, Timer)), None)


def train_minutes(trainer) -> float:
    """Minutes of training so far (0 without a Timer, i.e. without max_time)."""
    timer = _timer(trainer)
    return (timer.time_elapsed("train") if timer else 0.0) / 60


def run_fraction(trainer, decay_steps: int = 0) -> float:
    """Fraction of the run done (0..1): of `decay_steps` if set, else of max_steps, else of max_time."""
    step = trainer.global_step
    if decay_steps > 0:
        return min(1.0, step / decay_steps)
    if trainer.max_steps and trainer.max_steps > 0:
        return min(1.0, step / trainer.max_steps)
    timer = _timer(trainer)
    if timer is not None and timer.time_remaining("train") is not None:
        elapsed = timer.time_elapsed("train")
        return min(1.0, elapsed / max(elapsed + timer.time_remaining("train"), 1e-9))
    return 0.0


def lr_factor(trainer, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """The multiplier of the peak learning rate at the trainer's current step."""
    step = trainer.global_step
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * run_fraction(trainer, decay_steps)))
    return min_lr_ratio + (1 - min_lr_ratio) * cosine
