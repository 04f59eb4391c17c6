"""Shared, opt-in fixtures: a tiny synthetic cloth-changing world (scale 0.1), its index and an oracle parsing cache.

Nothing here is autouse; a test asks for `tiny_world` / `tiny_parsing_cache` by name. The world is rendered once
per test session (about 2 s on one core) into a session temporary folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from reid.data.index import IndexRow


@dataclass(frozen=True)
class TinyWorld:
    """A rendered synthcc world: dataset root, index CSV and its rows."""

    root: Path
    index: Path
    rows: list[IndexRow]


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    """synthcc at scale 0.1 (4 train identities, about 120 images of 128x64) with its index."""
    from reid.data.datasets import build_index
    from reid.data.index import read_index, write_index
    from reid.data.synthetic import generate_world

    base = tmp_path_factory.mktemp("tiny_world")
    root = generate_world("synthcc", base / "data", seed=0, scale=0.1, progress=False)
    index = write_index(build_index("synthcc", root), base / "index.csv")
    return TinyWorld(Path(root), Path(index), read_index(index))


@pytest.fixture(scope="session")
def tiny_parsing_cache(tiny_world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The oracle `parsing` teacher's cache of `tiny_world`, label maps stored at 32x16 (half of 64x32)."""
    from reid.teachers.base import build_teacher
    from reid.teachers.runner import run_teacher

    out = tmp_path_factory.mktemp("tiny_cache") / "parsing.h5"
    teacher = build_teacher("parsing", "oracle", None, "cpu", out_size=[32, 16])
    run_teacher(teacher, tiny_world.index, tiny_world.root, out, batch_size=16, workers=0, progress=False)
    return out


def copy_repo(dest: Path, skip: tuple[str, ...] = ()) -> Path:
    """Copy the working tree's tracked and untracked-but-not-ignored files into `dest` (no data, caches, .venv).

    `skip`: path prefixes left out (e.g. ".dvc/" to `dvc init` the copy afresh).
    """
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                             check=True, capture_output=True).stdout.decode()
    for rel in filter(None, listing.split("\0")):
        src = repo / rel
        if src.is_file() and not rel.startswith(skip):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="session")
def repo_copier():
    """`copy_repo` as a fixture, so test modules need not import conftest."""
    return copy_repo
