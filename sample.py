"""Generate from a trained model folder: t2i, caption, vqa, text, inpaint.

    python sample.py t2i --model runs/shapes/model "a red circle on the left"   (--help)

The same command as `omni sample` (its code: omni/commands/sample.py).
"""

import sys

from omni.commands.sample import main
from omni.errors import run_command

if __name__ == "__main__":
    sys.exit(run_command(main))
