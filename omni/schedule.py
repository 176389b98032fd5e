"""The run's length and the learning-rate schedule over it, for both trainers (the unified
model's, omni.training, and the VQ's, omni.tokenizers.training).

The schedule: linear warm-up, then a cosine decay over the run's steps or, when the run is
bounded by time alone (`trainer.max_time`), over its time budget: the wall-time schedule
survives resuming, since Lightning's Timer restores the time already spent.

A run with both `max_steps` and `max_time` (the demo's configs) is a fixed number of steps,
with the time as a guard: where the guard stops it first (a slower or busier machine), the
run says so (`time_limit_note`) and its release records it (`run_facts`).
"""

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


def stopped_by_time_limit(trainer) -> bool:
    """Whether `trainer.max_time` ended the run before the `max_steps` it was given."""
    timer = _timer(trainer)
    remaining = timer.time_remaining("train") if timer is not None else None
    planned = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else 0
    return remaining is not None and remaining <= 0 and trainer.global_step < planned


def time_limit_note(trainer) -> str | None:
    """The warning for a run that its time guard stopped early (None: it was not)."""
    if not stopped_by_time_limit(trainer):
        return None
    return (
        f"warning: the time limit (trainer.max_time, {train_minutes(trainer):.1f} min) stopped training at "
        f"step {trainer.global_step:,} of the {trainer.max_steps:,} it was given (a slower or busier machine); "
        f"its figures are those of a shorter run. Raise trainer.max_time to train every step."
    )


def run_facts(trainer) -> dict:
    """What a release records of the run that made it: steps trained, steps planned, whether the
    time limit stopped it (omni.release.RUN_FACTS)."""
    facts = {"trained_steps": int(trainer.global_step)}
    if trainer.max_steps and trainer.max_steps > 0:
        facts["planned_steps"] = int(trainer.max_steps)
    facts["stopped_by_time_limit"] = stopped_by_time_limit(trainer)
    return facts
