"""Train the VQ-GAN image tokenizer with Lightning.

    python tokenizers/train_vq.py fit --config configs/shapes/vq.yaml
    python tokenizers/train_vq.py fit --config configs/shapes/vq.yaml --ckpt_path last   # resume
    python tokenizers/train_vq.py fit --help

Lightning checkpoints (for resuming) go where the config's ModelCheckpoint says; the release
folder (config.json + model.safetensors, loadable with `omni.tokenizers.load_vq`) is written
to `model.export_dir` at every checkpoint and at the end.
"""

from lightning.pytorch.cli import LightningCLI

from omni.tokenizers.lit import ImageDataModule, VQLitModule


def main() -> None:
    LightningCLI(VQLitModule, ImageDataModule, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
