"""Shared, opt-in fixtures: a tiny synthetic cloth-changing world (scale 0.1), its index and an oracle parsing cache.

Nothing here is autouse; a test asks for `tiny_world` / `tiny_parsing_cache` by name. The world is rendered once
per test session (about 2 s on one core) into a session temporary folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import reid.methods  # noqa: F401  (registers the built-in methods)
from reid.data.index import IndexRow, write_index
from reid.methods.base import METHODS
from reid.pipeline import params as C


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


# --- a 12-image world with every configured teacher's cache and tiny trained models (registry and deploy tests) ---
CFG = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
WORLD = "synthcc"  # its params.yaml section is the configuration tested (oracle teachers, CPU presets)
TINY_TRAIN = {"epochs": 1, "batch_p": 4, "batch_k": 2, "input_size": [64, 32], "warmup_epochs": 0,
              "milestones": [1], "workers": 0, "pad": 2, "device": "cpu", "amp": False}


def teacher_order(cfg: dict | None = None) -> list[str]:
    """Configured teachers, each after the caches its params `needs`."""
    cfg = cfg or CFG
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for other in C.stage_teacher(cfg, WORLD, name)[0]["params"].get("needs", []):
            visit(other)
        order.append(name)

    for name in C.teacher_names(cfg):
        visit(name)
    return order


@pytest.fixture(scope="session")
def small_world(tiny_world, tmp_path_factory) -> tuple[Path, Path]:
    """12 rows of the tiny world: 4 train identities x 2 images, 2 queries, 2 gallery images."""
    rows = tiny_world.rows
    train: list = []
    for pid in sorted({r.pid for r in rows if r.split == "train"})[:4]:
        train += [r for r in rows if r.split == "train" and r.pid == pid][:2]
    query = [r for r in rows if r.split == "query"][:2]
    gallery = [r for r in rows if r.split == "gallery" and r.pid in {q.pid for q in query}][:2]
    index = write_index(train + query + gallery, tmp_path_factory.mktemp("small_world") / "index.csv")
    return tiny_world.root, Path(index)


def build_teacher_cache(name: str, root: Path, index: Path, out: Path, caches: dict[str, str]) -> dict:
    from reid.teachers.base import build_teacher

    kw = C.stage_teacher(CFG, WORLD, name)[0]
    teacher = build_teacher(name, kw.get("backend", "onnx"), kw.get("model"), "cpu", caches, **kw["params"])
    teacher.build_cache(index, root, out, batch_size=8, workers=0, progress=False)
    return teacher.fields()


@pytest.fixture(scope="session")
def teacher_caches(small_world, tmp_path_factory) -> dict[str, Any]:
    root, index = small_world
    folder = tmp_path_factory.mktemp("teacher_caches")
    caches: dict[str, str] = {}
    fields: dict[str, dict] = {}
    for name in teacher_order():
        fields[name] = build_teacher_cache(name, root, index, folder / f"{name}.h5", caches)
        caches[name] = str(folder / f"{name}.h5")
    return {"paths": caches, "fields": fields, "folder": folder}


def method_params(method: str, row: str | None, root: Path) -> dict[str, Any]:
    run = method + (f"--{row}" if row else "")
    params = C.stage_train(CFG, WORLD, C.model_run(run))[0]["method_params"]
    params.update(METHODS.get(method).tiny_params)
    # paths into the configured world point into the test's world instead
    return {k: v.replace(f"data/{WORLD}", str(root)) if isinstance(v, str) else v for k, v in params.items()}


@pytest.fixture(scope="session")
def trained(small_world, teacher_caches, tmp_path_factory):
    """(method, trained row) -> model.pt, trained once per session; derived caches made by their teacher method."""
    from reid.engine.commands import teacher_outputs
    from reid.engine.trainer import train

    root, index = small_world
    folder = tmp_path_factory.mktemp("trained")
    models: dict[tuple[str, str | None], Path] = {}
    caches = dict(teacher_caches["paths"])

    def model_for(method: str, row: str | None) -> Path:
        key = (method, row)
        if key not in models:
            params = method_params(method, row, root)
            probe = METHODS.get(method)(**params)
            needs = {*probe.caches, *probe.test_caches}
            for name in sorted(needs - set(caches)):  # a derived cache: its teacher method, trained and run
                provider = C.derived_caches()[name]
                out = folder / f"{name}.h5"
                teacher_outputs(model_for(provider, None), index, root, out, {k: caches[k] for k in caches},
                                batch_size=8, workers=0, device="cpu")
                caches[name] = str(out)
            out_dir = folder / f"{method}--{row or 'default'}"
            train(method, params, index, root, out_dir, caches={k: caches[k] for k in sorted(needs)},
                  train_cfg=dict(TINY_TRAIN))
            models[key] = out_dir / "model.pt"
        return models[key]

    return model_for, caches


