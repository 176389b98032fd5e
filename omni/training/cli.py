"""The command line both training scripts share (train.py, tokenizers/train_vq.py): LightningCLI
with every config field's docstring as its `--help` text, progress lines for runs without a
progress bar (`--progress.*`, see omni.training.progress), and the run's config saved beside its logs.
"""

from __future__ import annotations

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from omni.training.progress import ProgressLines


class TrainingCLI(LightningCLI):
    """LightningCLI for Omni's trainers; subclasses extend `add_arguments_to_parser` via super()."""

    def __init__(self, *args, **kwargs):
        # Dataclass fields (ModelConfig, VQConfig) document themselves in attribute docstrings;
        # jsonargparse reads those only when asked.
        set_parsing_settings(docstring_parse_attribute_docstrings=True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ProgressLines, "progress")
