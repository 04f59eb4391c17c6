"""Worker processes that die with their parent.

A DataLoader worker blocked on a full queue does not notice that its parent was killed (kill -9, an OOM kill, a
cluster pre-emption) and lingers forever holding memory and file handles. On Linux a worker asks the kernel to
send it SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> bool:
    """Make this process receive SIGKILL when its parent exits; True when armed. Call it in a worker's init."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return True


def worker_init(worker_id: int) -> None:  # noqa: ARG001 - DataLoader's worker_init_fn signature
    """DataLoader `worker_init_fn`: die with the parent."""
    die_with_parent()
