"""One writer per output at a time: an exclusive lock file holding the owner's pid.

A lock left by a process that died is taken over, so a killed run never blocks
the next one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from ..errors import CodeclensError
from .process import pid_alive


@contextlib.contextmanager
def pid_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold ``path`` as a lock for ``what`` (named in the error when another live process has it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid_alive(pid):
                raise CodeclensError(
                    f"{what} is in use by another run (process {pid}); wait for it or use another --out"
                ) from None
            path.unlink(missing_ok=True)
    else:
        raise CodeclensError(f"cannot lock {what} ({path})")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        path.unlink(missing_ok=True)
