"""Device selection, one rule for teachers, training, evaluation and benchmarks."""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)


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


# Convolutions a CPU's bfloat16 kernels are checked on before autocast uses them: a 3x3 stride-2 convolution of a
# 4x2 map, which PyTorch 2.14's oneDNN bf16 kernel on an AMX CPU (Intel Xeon, amx_bf16) computes wrong (relative
# error > 1, sometimes inf; e.g. batch 16-64 at 32-256 input channels), the deepest stage of a ResNet / HRNet at 64x32.
BF16_CONV_PROBES = ((16, 64, 128, (4, 2)), (24, 32, 64, (4, 2)), (32, 256, 512, (4, 2)), (16, 32, 64, (8, 4)))
BF16_CONV_TOLERANCE = 0.05  # max |bf16 - fp32| / max |fp32| of a correct kernel is ~0.01 on these probes


def bf16_conv_error() -> float:
    """Largest relative error of this CPU's bfloat16 3x3 stride-2 convolution against float32 on the probes."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for n, c_in, c_out, hw in BF16_CONV_PROBES:
        x = torch.randn(n, c_in, *hw, generator=gen).bfloat16()
        w = torch.randn(c_out, c_in, 3, 3, generator=gen).bfloat16()
        with torch.no_grad():
            ref = F.conv2d(x.float(), w.float(), None, 2, 1)
            out = F.conv2d(x, w, None, 2, 1).float()
        err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
        worst = max(worst, err if err == err else float("inf"))  # NaN counts as wrong
    return worst


@functools.cache
def cpu_bf16_usable() -> bool:
    """Native bf16 (`cpu_has_native_bf16`) whose convolutions are also correct (`bf16_conv_error`); checked once
    per process, and a kernel found wrong is logged as a warning naming the PyTorch version (float32 is used)."""
    if not cpu_has_native_bf16():
        return False
    err = bf16_conv_error()
    if err <= BF16_CONV_TOLERANCE:
        return True
    import torch

    log.warning("this CPU's bfloat16 convolution is wrong under PyTorch %s (relative error %.3g against float32 "
                "on a 3x3 stride-2 convolution of a 4x2 map): cpu_amp is ignored, computing in float32",
                torch.__version__, err)
    return False


def autocast_dtype(device_type: str, amp: bool, cpu_amp: bool):
    """The autocast dtype of a training step, or None for float32: float16 on CUDA (`amp`, with loss scaling),
    bfloat16 on a CPU with native, correct bf16 (`cpu_amp`; no loss scaling needed: bf16 has float32's exponent
    range)."""
    import torch

    if device_type == "cuda" and amp:
        return torch.float16
    if device_type == "cpu" and cpu_amp and cpu_bf16_usable():
        return torch.bfloat16
    return None
