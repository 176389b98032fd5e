"""One error convention for every command: a mistake in the user's input ends in one clear line.

Our code raises ValueError / FileNotFoundError / FloatingPointError (or `CommandError`) with a
message that names the file and the fix. `run_command` runs a command's `main(argv)`; such an
error raised by our own code becomes `error: MESSAGE` on stderr and exit status 2. Errors raised
inside a library (torch, Lightning) keep their full traceback: those are bugs to report, not
inputs to fix. Argument syntax errors are argparse's own (`usage: ...`, also status 2).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


class CommandError(Exception):
    """A command cannot go on for a reason the user fixes (its message says how)."""


USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, CommandError)
_OMNI = Path(__file__).resolve().parent


def raised_by_us(error: BaseException) -> bool:
    """Whether the innermost frame of the error's traceback is in the omni package."""
    if isinstance(error, CommandError):
        return True
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_OMNI)


def run_command(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's `main(argv)`; its exit status (2 after an input error, printed as one line)."""
    try:
        return main(argv) or 0
    except USER_ERRORS as e:
        if not raised_by_us(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
