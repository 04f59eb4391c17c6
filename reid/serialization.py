"""Reading weight, model and checkpoint files without running code: the one place that calls `torch.load`.

A `.pth` / `.pt` file is a pickle, and unpickling can run arbitrary code. Every file the pipeline reads (backbone
weights named in params.yaml, teacher checkpoints, `model.pt`, `checkpoint.pt`) goes through `load_file`, which
unpickles with `weights_only=True` (tensors, numbers, strings and plain containers only) or reads a
`.safetensors` file, and turns every failure into an error that names the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

__all__ = ["UnsafeFileError", "CorruptFileError", "load_file"]


class UnsafeFileError(ValueError):
    """The file holds pickled Python objects beyond tensors and plain containers: loading it could run code."""


class CorruptFileError(ValueError):
    """The file is truncated, empty or not a PyTorch / safetensors file at all."""


def load_file(path: str | Path, what: str = "weights") -> Any:
    """Load `path` (`.safetensors`, or a PyTorch file read weights-only) on the CPU; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file as load_safetensors

            return load_safetensors(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - the library raises several types; re-raised with the file
            raise CorruptFileError(f"{path}: not a readable safetensors {what} file ({exc})") from exc
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{path}: empty {what} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text:
            detail = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "global" in line), "")
            raise UnsafeFileError(
                f"{path}: refused: this {what} file holds pickled Python objects besides tensors and plain "
                f"containers, and loading it could run code ({detail or text.splitlines()[0]}). Only weights-only "
                "files load: save a plain state dict (torch.save(model.state_dict(), ...)) or a .safetensors file."
            ) from exc
        raise CorruptFileError(f"{path}: not a readable PyTorch {what} file ({text.splitlines()[0]})") from exc
    except (EOFError, RuntimeError, OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptFileError(f"{path}: corrupt or truncated PyTorch {what} file ({first})") from exc
