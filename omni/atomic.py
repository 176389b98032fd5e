"""Atomic file writes: a reader sees the old file or the complete new one, never half of one.

Files are left with the mode a plain `open(path, "w")` would give them (0666 less the umask),
whatever the writer did: temporary files start as 0600, and the safetensors writer creates its
files 0600 too, which would make a release unreadable to the other users of a cluster.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere reading it means setting it, so it is set straight back
    os.umask(mask)
    return mask


def give_default_mode(path: str | Path) -> None:
    """Give a file or folder we created the mode a normal write would: 0666 / 0777 less the umask."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask())


def write_file_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` to fill a temporary sibling, flush it to disk, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        give_default_mode(tmp)  # after writing: some writers (safetensors) recreate the file as 0600
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
