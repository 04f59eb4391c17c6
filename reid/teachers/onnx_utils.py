"""ONNX Runtime helpers: session creation with honest provider reporting, and model signature checks.

The most common silent slowdown with ONNX teachers is a machine with a GPU where ``onnxruntime`` (CPU-only) was
installed beside, or instead of, ``onnxruntime-gpu``: both provide the same ``onnxruntime`` module, the CPU one
wins, and everything runs on the CPU without an error. ``create_session`` therefore reports the providers the
session really uses (``session.get_providers()``), not the ones requested, and warns loudly in that case.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ModelSignatureError(ValueError):
    """An ONNX file's inputs/outputs differ from what the teacher expects (wrong file, wrong export)."""


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU, via torch when importable, else via ``nvidia-smi -L``."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def cpu_only_warning(model_path: str | Path, available: Sequence[str]) -> str:
    """The text of the GPU-present-but-CPU-only warning (kept separate so it can be tested)."""
    return (
        f"ONNX Runtime runs {model_path} on the CPU although a GPU is present.\n"
        f"  Available providers: {', '.join(available)}.\n"
        "  Usual cause: the CPU package `onnxruntime` is installed beside/instead of `onnxruntime-gpu`; both\n"
        "  install the same `onnxruntime` module and the CPU one shadows the GPU one.\n"
        "  Fix: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu\n"
        "  (a CUDA/cuDNN matching that onnxruntime-gpu release must be installed; see envs/ for a conda env)."
    )


def _banner(text: str) -> str:
    bar = "!" * 100
    return f"\n{bar}\n{text}\n{bar}\n"


def session_options(intra_threads: int | None = None) -> Any:
    """Deterministic-ish session options: full graph optimisation, optional thread cap."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_threads:
        opts.intra_op_num_threads = int(intra_threads)
    return opts


def create_session(
    model_path: str | Path, prefer_gpu: bool = True, intra_threads: int | None = None
) -> tuple[Any, list[str]]:
    """Open an ONNX model, CUDA provider first when available; return (session, providers really used)."""
    import onnxruntime as ort

    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {model_path}")
    available = list(ort.get_available_providers())
    requested = [CUDA, CPU] if prefer_gpu and CUDA in available else [CPU]
    session = ort.InferenceSession(str(model_path), sess_options=session_options(intra_threads),
                                   providers=requested)
    used = list(session.get_providers())
    log.info("ONNX Runtime %s: %s uses providers %s (available: %s)", ort.__version__, model_path.name, used,
             available)
    if prefer_gpu and CUDA not in used and gpu_present():
        text = cpu_only_warning(model_path, available)
        log.warning(text)
        print(_banner(text), file=sys.stderr, flush=True)
    return session, used


def describe_signature(session: Any) -> str:
    """Human-readable inputs/outputs with shapes, e.g. ``inputs [input.1 (1, 3, 473, 473)]``."""

    def fmt(args: Sequence[Any]) -> str:
        return ", ".join(f"{a.name} {tuple(a.shape)}" for a in args) or "(none)"

    return f"inputs [{fmt(session.get_inputs())}], outputs [{fmt(session.get_outputs())}]"


def check_signature(
    session: Any,
    inputs: Sequence[str],
    n_outputs: int | None = None,
    output_names: Sequence[str] | None = None,
    path: str | Path = "<model>",
) -> None:
    """Raise ModelSignatureError unless the model has exactly ``inputs`` and the expected outputs."""
    found_in = [a.name for a in session.get_inputs()]
    found_out = [a.name for a in session.get_outputs()]
    problems = []
    if list(inputs) != found_in:
        problems.append(f"expected inputs {list(inputs)}, found {found_in}")
    if n_outputs is not None and len(found_out) != n_outputs:
        problems.append(f"expected {n_outputs} outputs, found {len(found_out)}")
    if output_names is not None and list(output_names) != found_out:
        problems.append(f"expected outputs {list(output_names)}, found {found_out}")
    if problems:
        raise ModelSignatureError(
            f"{path}: unexpected ONNX signature: {'; '.join(problems)}.\n"
            f"  Model has {describe_signature(session)}.\n"
            "  Is this the right model file for this teacher (see README, per-teacher weights)?"
        )
