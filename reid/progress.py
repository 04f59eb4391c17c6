"""Progress-bar pacing shared by every long loop (training, pretraining, embedding, teacher outputs)."""

from __future__ import annotations

import sys


def progress_interval() -> float:
    """Seconds between progress-bar refreshes: live on a terminal, every 30 s into a log file."""
    return 0.1 if sys.stderr.isatty() else 30.0
