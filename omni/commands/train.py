"""`omni train` (train.py): train the unified Transformer with Lightning on code shards.

    python train.py fit --config configs/shapes/model.yaml                     # the CPU demo run
    python train.py fit --config configs/shapes/model.yaml --ckpt_path last    # resume
    python train.py fit --config configs/base/model-100m.yaml                  # a GPU run
    python train.py fit --help                                                 # every option, documented

The data module loads the assets (`data.tokenizer`, `data.vq`: omni.assets) and hands them to
the model, which completes its architecture with them; the data module takes what its batches
depend on from the model when the run starts (`OmniDataModule.connect`).
Lightning checkpoints (for resuming) go where the config's ModelCheckpoint says; the release
folder (loadable with `omni.load_pretrained`) is written to `model.export_dir` at every
checkpoint and at the end.
"""

import warnings

from omni.training.cli import TrainingCLI
from omni.training.datamodule import OmniDataModule
from omni.training.module import OmniLitModule


class OmniCLI(TrainingCLI):
    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.assets", "model.assets", apply_on="instantiate")


def main(argv: list[str] | None = None) -> None:
    # Our loaders are IterableDatasets with a fixed number of batches per epoch (len() is exact).
    warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
    OmniCLI(OmniLitModule, OmniDataModule, args=argv)
