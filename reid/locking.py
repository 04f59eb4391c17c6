"""One writer per output: an exclusive, non-blocking lock on `<output>.lock` held while the output is written.

A second writer of the same output (two identical `teach --out kp.h5`, two trainings into one run folder) is
refused at once with a message naming the holder (pid, host, command), instead of both writing one work file.
The lock is `flock` on an open file, so it dies with its process: a killed writer never leaves a stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


class OutputLocked(RuntimeError):
    """Another process is writing the same output."""


def lock_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


@contextmanager
def exclusive_lock(out: str | Path, what: str = "output") -> Iterator[Path]:
    """Hold `<out>.lock` for the block; raise OutputLocked naming the holder if another process has it."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputLocked(f"{out}: another {what} writer holds it ({holder or 'holder unknown'}; lock "
                                   f"{path}); wait for it to finish or stop it") from None
            if exc.errno == errno.ENOLCK:  # a filesystem without locks: go on, as HDF5 does with locking=False
                log.warning("%s: this filesystem does not support locks; one writer per output is not enforced",
                            path)
                yield path
                return
            raise
        try:  # the file may have been unlinked by a holder that released it between our open and our lock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{' '.join(sys.argv)[:300]}\n".encode())
        yield path
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 1000, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
