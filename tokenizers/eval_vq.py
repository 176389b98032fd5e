"""Evaluate a trained VQ tokenizer on image shards (one JSON object).

    python tokenizers/eval_vq.py --vq runs/shapes/vq --shards 'data/shapes/val-*.tar'

The same command as `omni tokenizer eval` (its code: omni/commands/eval_vq.py).
"""

import sys

from omni.commands.eval_vq import main
from omni.errors import run_command

if __name__ == "__main__":
    sys.exit(run_command(main))
