"""benchmarks/visible_pooling_probe.py: the visible-person weight of each feature-map cell, by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "visible_pooling_probe.py"
_spec = importlib.util.spec_from_file_location("visible_pooling_probe", _PATH)
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def test_visible_share_is_each_cells_fraction_of_visible_person_pixels() -> None:
    parsing = np.zeros((8, 4), dtype=np.uint8)
    parsing[0:4, 0:4] = 3        # top cell: all person
    parsing[4:8, 0:1] = 5        # bottom cell: a quarter person (one column of four), the rest background/occluder
    share = probe.visible_share(parsing, (2, 1))
    assert share.shape == (2, 1)
    np.testing.assert_allclose(share[:, 0], [1.0, 0.25])
    share = probe.visible_share(parsing, (2, 2))  # left column of the bottom row: half of its 4x2 cell
    np.testing.assert_allclose(share, [[1.0, 1.0], [0.5, 0.0]])
