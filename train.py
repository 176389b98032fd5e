"""Train the unified Transformer with Lightning on code shards.

    python train.py fit --config configs/shapes/model.yaml                     # the CPU demo run
    python train.py fit --config configs/shapes/model.yaml --ckpt_path last    # resume
    python train.py fit --config configs/base/model-100m.yaml                  # a GPU run
    python train.py fit --help                                                 # every option, documented

The data module builds the unified vocabulary from `data.tokenizer` and `data.vq` and hands it
to the model; `model.transformer.image_generation` (mask or ar) is handed to the data module.
Lightning checkpoints (for resuming) go where the config's ModelCheckpoint says; the release
folder (loadable with `omni.load_pretrained`) is written to `model.export_dir` at every
checkpoint and at the end.
"""

import warnings

from omni.cli import TrainingCLI
from omni.errors import report_user_errors
from omni.lit import OmniDataModule, OmniLitModule


class OmniCLI(TrainingCLI):
    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.vocab", "model.vocab", apply_on="instantiate")
        parser.link_arguments("data.tokenizer", "model.tokenizer")
        parser.link_arguments("data.vq", "model.vq")
        parser.link_arguments("model.transformer.image_generation", "data.image_generation")


def main() -> None:
    # Our loaders are IterableDatasets with a fixed number of batches per epoch (len() is exact).
    warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
    OmniCLI(OmniLitModule, OmniDataModule)


if __name__ == "__main__":
    report_user_errors(main)
