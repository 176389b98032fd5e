"""The training loss, one path for every caller: per-token cross-entropy where a target is set,
averaged per task and weighted, plus the optional z-loss (Chameleon)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from omni.grammar import IGNORE, TASKS


class TokenLosses(NamedTuple):
    """Per-target-position values, 1-D in row-major order over positions whose target is not IGNORE."""

    ce: torch.Tensor  # cross-entropy (fp32)
    lse_sq: torch.Tensor  # squared log-partition, for the z-loss (fp32)
    correct: torch.Tensor  # argmax == target (bool)


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> TokenLosses:
    """Cross-entropy, squared log-partition and argmax accuracy where a target is set."""
    keep = targets != IGNORE
    selected = logits[keep].float()  # (N, V)
    wanted = targets[keep]
    lse = selected.logsumexp(-1)
    ce = lse - selected.gather(-1, wanted[:, None]).squeeze(-1)
    return TokenLosses(ce, lse.square(), selected.argmax(-1) == wanted)


class TaskFigure(NamedTuple):
    loss: torch.Tensor  # mean token loss of the task
    accuracy: torch.Tensor  # argmax accuracy of the task
    tokens: int  # target tokens of the task in the batch


def training_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    task: torch.Tensor | None = None,
    task_weights: dict[str, float] | None = None,
    z_loss: float = 0.0,
) -> tuple[torch.Tensor, dict[str, TaskFigure]]:
    """The weighted sum of each task's mean token loss (+ z_loss x mean squared log-partition), and
    each present task's figures. `task` (B, T) holds each target's index in `omni.grammar.TASKS`
    (None: every target counts as the first task); `task_weights` default to 1."""
    losses = token_losses(logits, targets)
    kept = task[targets != IGNORE] if task is not None else torch.zeros_like(losses.ce, dtype=torch.long)
    total = z_loss * losses.lse_sq.mean() if z_loss and losses.ce.numel() else logits.new_zeros(())
    figures = {}
    for i, name in enumerate(TASKS):
        selected = kept == i
        n = int(selected.sum())
        if n == 0:
            continue
        figures[name] = TaskFigure(losses.ce[selected].mean(), losses.correct[selected].float().mean(), n)
        total = total + (task_weights or {}).get(name, 1.0) * figures[name].loss
    if not figures:  # a batch without targets still gives a graph (and a zero gradient)
        total = total + logits.sum() * 0.0
    return total, figures
