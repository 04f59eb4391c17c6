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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX-BF16 or AVX512-BF16): only there does CPU autocast
    to bfloat16 run faster than float32 (elsewhere it is emulated and slower)."""
    import torch

    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def autocast_dtype(device_type: str, amp: bool, cpu_amp: bool):
    """The autocast dtype of a training step, or None for float32: float16 on CUDA (`amp`, with loss scaling),
    bfloat16 on a CPU with native bf16 (`cpu_amp`; no loss scaling needed: bf16 has float32's exponent range)."""
    import torch

    if device_type == "cuda" and amp:
        return torch.float16
    if device_type == "cpu" and cpu_amp and cpu_has_native_bf16():
        return torch.bfloat16
    return None
