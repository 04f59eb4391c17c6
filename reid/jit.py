"""numba, configured once for the project: the compiled CPU kernels import `njit` and `prange` from here.

The pipeline forks (DataLoader and teacher decode workers) in processes that also run compiled kernels
(evaluation, ISP clustering); GNU OpenMP, numba's default threading layer with the Linux wheels, is not
fork-safe. "forksafe" picks TBB, Intel OpenMP or numba's built-in workqueue (the same speed for these kernels
here: 0.18 s for a Market-size evaluation). Setting NUMBA_THREADING_LAYER still overrides.
"""

from __future__ import annotations

import os

import numba
from numba import njit, prange

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "forksafe"

__all__ = ["njit", "prange"]
