"""What every benchmark script shares: writing its result as JSON next to the printed table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_result(result: dict[str, Any], out: Path | None) -> None:
    """Write ``result`` to ``out`` as indented JSON (parents created); do nothing when ``out`` is None."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
