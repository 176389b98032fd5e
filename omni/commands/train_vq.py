"""`omni tokenizer train-vq` (tokenizers/train_vq.py): train the VQ-GAN image tokenizer with Lightning.

    python tokenizers/train_vq.py fit --config configs/shapes/vq.yaml
    python tokenizers/train_vq.py fit --config configs/shapes/vq.yaml --ckpt_path last   # resume
    python tokenizers/train_vq.py fit --help

Lightning checkpoints (for resuming) go where the config's ModelCheckpoint says; the release
folder (config.json + model.safetensors, loadable with `omni.tokenizers.load_vq`) is written
to `model.export_dir` at every checkpoint and at the end.
"""

import warnings

from omni.tokenizers.training import ImageDataModule, VQLitModule
from omni.training.cli import TrainingCLI


def main(argv: list[str] | None = None) -> None:
    # Lightning warns that step-interval checkpoints under manual optimisation may hold state from
    # before the optimiser step; ours are saved after both optimisers stepped (resume is tested).
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    TrainingCLI(VQLitModule, ImageDataModule, args=argv)
