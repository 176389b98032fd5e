"""Progress lines for long runs whose progress bar is off (the demo, batch jobs, logs).

A run without a progress bar used to print nothing for its whole budget, which looks like a
hang. `ProgressLines` prints one compact line about every minute, on rank 0:

    [train] step 1,250/4,000 | 6.1/21.0 min | loss 1.932 | t2i_acc 71.2% caption_acc 80.4% | 5.9 steps/s

Figures are means over the steps since the previous line. Interactive runs keep Lightning's bar
(`enabled: null` prints only when the bar is off or stderr is not a terminal).
"""

from __future__ import annotations

import fnmatch
import sys
import time
from collections import defaultdict

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer


class ProgressLines(L.Callback):
    """Print step, elapsed / budget, loss and accuracies about every `every_seconds` seconds.

    Args:
        every_seconds: seconds between two lines (the first comes after the first step).
        enabled: True always prints, False never; None prints when the progress bar is off or
            stderr is not a terminal.
        metrics: logged training metrics to show, by name or shell pattern (`train/*_acc`), in
            order; absent ones are left out.
    """

    def __init__(
        self,
        every_seconds: float = 60.0,
        enabled: bool | None = None,
        metrics: tuple[str, ...] = ("train/loss", "train/*_acc", "psnr"),
    ):
        if every_seconds <= 0:
            raise ValueError(f"progress.every_seconds must be > 0, got {every_seconds}")
        self.every_seconds = every_seconds
        self.enabled = enabled
        self.metrics = tuple(metrics)
        self._sums: dict = {}
        self._counts: dict[str, int] = defaultdict(int)
        self._last_print = self._start = 0.0
        self._last_step = 0
        self._printed = False

    def _active(self, trainer: L.Trainer) -> bool:
        if not trainer.is_global_zero:
            return False
        if self.enabled is not None:
            return self.enabled
        return trainer.progress_bar_callback is None or not sys.stderr.isatty()

    def _rank(self, name: str) -> int | None:
        """Index of the first pattern of `metrics` that names `name` (None: not shown)."""
        return next((i for i, p in enumerate(self.metrics) if fnmatch.fnmatchcase(name, p)), None)

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self._last_print = time.monotonic()
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._active(trainer):
            return
        # Lightning's callback_metrics keep a metric's last value when a step did not log it (a
        # task absent from a batch); a module that lists this step's own figures is read instead.
        step_metrics = getattr(pl_module, "step_metrics", None)
        metrics = step_metrics if isinstance(step_metrics, dict) else trainer.callback_metrics
        for name, value in metrics.items():
            if self._rank(name) is not None and isinstance(value, (torch.Tensor, int, float)):
                value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
                self._sums[name] = self._sums.get(name, 0.0) + value  # summed on its device: no sync
                self._counts[name] += 1
        now = time.monotonic()
        if not self._printed or now - self._last_print >= self.every_seconds:  # first: the run has started
            self._print(trainer, now)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._active(trainer):  # always: a run that ends says so, whatever the last line was
            self._print(trainer, time.monotonic(), tag="[train done]")

    def _print(self, trainer: L.Trainer, now: float, tag: str = "[train]") -> None:
        step = trainer.global_step
        of = f"/{trainer.max_steps:,}" if trainer.max_steps and trainer.max_steps > 0 else ""
        parts = [f"step {step:,}{of}", self._minutes(trainer, now)]
        figures = []
        for name in sorted(self._sums, key=self._rank):
            mean = float(self._sums[name]) / max(self._counts[name], 1)
            short = name.removeprefix("train/")
            figures.append(f"{short} {mean:.1%}" if short.endswith("_acc") else f"{short} {mean:.4g}")
        if figures:
            parts.append(" ".join(figures[:1]))
            if len(figures) > 1:
                parts.append(" ".join(figures[1:]))
        elapsed = now - self._last_print
        if step > self._last_step and elapsed > 0:
            parts.append(f"{(step - self._last_step) / elapsed:.1f} steps/s")
        print(f"{tag} " + " | ".join(parts), flush=True)
        self._printed = True
        self._sums.clear()
        self._counts.clear()
        self._last_print, self._last_step = now, step

    def _minutes(self, trainer: L.Trainer, now: float) -> str:
        """Elapsed / budget in minutes: the Timer's (max_time, survives resuming) or this process's."""
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is not None and timer.time_remaining("train") is not None:
            elapsed = timer.time_elapsed("train")
            return f"{elapsed / 60:.1f}/{(elapsed + timer.time_remaining('train')) / 60:.1f} min"
        return f"{(now - self._start) / 60:.1f} min"
