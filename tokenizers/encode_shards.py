"""Pre-tokenize image shards into code shards (KEY.codes.npy + KEY.txt + KEY.json).

    python tokenizers/encode_shards.py --vq runs/shapes/vq --shards 'data/shapes/*.tar' --out data/shapes-codes

The same command as `omni tokenizer encode` (its code: omni/commands/encode_shards.py).
"""

import sys

from omni.commands.encode_shards import main
from omni.errors import run_command

if __name__ == "__main__":
    sys.exit(run_command(main))
