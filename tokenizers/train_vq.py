"""Train the VQ-GAN image tokenizer with Lightning.

    python tokenizers/train_vq.py fit --config configs/shapes/vq.yaml

The same command as `omni tokenizer train-vq` (its code: omni/commands/train_vq.py).
"""

import sys

from omni.commands.train_vq import main
from omni.errors import run_command

if __name__ == "__main__":
    sys.exit(run_command(main))
