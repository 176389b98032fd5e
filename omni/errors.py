"""Command-line error reporting: a mistake in the user's input ends in one clear line, not a traceback.

Our code raises ValueError / FileNotFoundError / FloatingPointError with messages that name the
file and the fix. When such an error reaches a script's top level, `report_user_errors` prints
`error: MESSAGE` and exits with status 2. Errors raised inside a library (torch, Lightning) keep
their full traceback: those are bugs to report, not inputs to fix.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)
_OMNI = Path(__file__).resolve().parent


def raised_by_us(error: BaseException, script: str | None = None) -> bool:
    """Whether the innermost frame of the error's traceback is in the omni package or the script."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    where = Path(tb.tb_frame.f_code.co_filename).resolve()
    ours = where.is_relative_to(_OMNI)
    return ours or (script is not None and where == Path(script).resolve())


def report_user_errors(main: Callable[[], object], script: str | None = None) -> None:
    """Run `main`; an input error raised by our own code becomes `error: MESSAGE` and exit status 2."""
    try:
        main()
    except USER_ERRORS as e:
        if not raised_by_us(e, script or sys.argv[0]):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
