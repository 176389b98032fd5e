"""Train the text tokenizer (a byte-level BPE with Omni's special tokens).

    python tokenizers/train_text.py --shards 'data/shapes/train-*.tar' --out runs/shapes/tokenizer.json

The same command as `omni tokenizer train-text` (its code: omni/commands/train_text.py).
"""

import sys

from omni.commands.train_text import main
from omni.errors import run_command

if __name__ == "__main__":
    sys.exit(run_command(main))
