"""Device selection, one rule for teachers, training, evaluation and benchmarks."""

from __future__ import annotations


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible to torch, else 'cpu'; other values ('cpu', 'cuda:1') pass through."""
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:  # torch is optional for pure-ONNX teachers
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"
