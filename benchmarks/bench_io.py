"""What every benchmark script shares: quieting stand-in models, pinning threads, printing and writing the result."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def write_result(result: dict[str, Any], out: Path | None) -> None:
    """Write ``result`` to ``out`` as indented JSON (parents created); do nothing when ``out`` is None."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")


def setup(threads: int | None, quiet: tuple[str, ...] = (".*no pretrained weights.*",)) -> None:
    """Silence the warnings of backbones built without weight files (benchmarks time them on random weights) and
    pin torch's CPU threads when ``threads`` is given."""
    import warnings

    import torch

    for pattern in quiet:
        warnings.filterwarnings("ignore", message=pattern)
    if threads:
        torch.set_num_threads(threads)


def json_text(result: dict[str, Any]) -> str:
    """The result itself as the printed table, for scripts whose numbers read best as indented JSON."""
    return json.dumps(result, indent=2)


def report(result: dict[str, Any], table: Callable[[dict[str, Any]], str], out: Path | None) -> int:
    """Print ``table(result)``, write the JSON to ``out`` (when given); the script's exit status (0)."""
    print(table(result))
    write_result(result, out)
    return 0
