"""The command line both training scripts share (train.py, tokenizers/train_vq.py): LightningCLI
with every config field's docstring as its `--help` text, progress lines for runs without a
progress bar (`--progress.*`, see omni.training.progress), the run's config saved beside its logs,
and `trainer.precision: auto` (measured on this machine: omni.training.precision).
"""

from __future__ import annotations

from typing import Literal

import torch
from jsonargparse import set_parsing_settings
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from omni.training.precision import choose_precision
from omni.training.progress import ProgressLines


class OmniTrainer(Trainer):
    """Lightning's Trainer, whose `precision` may also be `auto` (the default): bf16 mixed precision
    where this machine multiplies bf16 matrices clearly faster than fp32, fp32 elsewhere, measured
    when the run starts (about a second) and printed."""

    def __init__(self, *args, precision: _PRECISION_INPUT | Literal["auto"] | None = "auto", **kwargs):
        if precision == "auto":
            choice = choose_precision(_training_device(kwargs.get("accelerator", "auto")))
            print(choice, flush=True)
            precision = choice.precision
        super().__init__(*args, precision=precision, **kwargs)


def _training_device(accelerator) -> str:
    """The torch device type a Trainer with this `accelerator` will train on (cpu or cuda)."""
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name in ("cpu", "cpuaccelerator"):
        return "cpu"
    if name in ("gpu", "cuda", "cudaaccelerator"):
        return "cuda"
    raise ValueError(
        f"trainer.precision auto measures CPUs and CUDA GPUs, not accelerator {accelerator!r}: "
        "set trainer.precision (e.g. 32-true or bf16-mixed)"
    )


class TrainingCLI(LightningCLI):
    """LightningCLI for Omni's trainers; subclasses extend `add_arguments_to_parser` via super()."""

    def __init__(self, *args, **kwargs):
        # Dataclass fields (ModelConfig, VQConfig) document themselves in attribute docstrings;
        # jsonargparse reads those only when asked.
        set_parsing_settings(docstring_parse_attribute_docstrings=True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("trainer_class", OmniTrainer)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ProgressLines, "progress")
