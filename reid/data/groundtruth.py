"""The synthetic worlds' per-image ground truth files (groundtruth/<image path>.npz): written by the generator,
read by the oracle teachers and the probes. Kept apart from the renderer so that reading a world's ground truth
does not make a stage depend on how the world is drawn (its files carry that, by their content hash)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed-compatible archive with fixed zip timestamps (byte-reproducible for DVC)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.asanyarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, arr.getvalue())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def load_groundtruth(root: str | Path, rel_path: str) -> dict[str, np.ndarray]:
    """Ground truth of one image of a synthetic world (`rel_path` = the image path relative to `root`)."""
    path = Path(root) / "groundtruth" / Path(rel_path).with_suffix(".npz")
    if not path.is_file():
        raise FileNotFoundError(
            f"synthetic ground truth not found: {path} (for image {rel_path!r}); the oracle backend only works on "
            f"a world made by `python -m reid synth` (a WORLD.json marker should be in {root})")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
