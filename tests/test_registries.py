"""Every registered teacher and method, tested through the same code with no per-module test code (as timm tests
every model in its registry): a new module is covered as soon as it is registered and configured.

- teachers: each teacher configured in params.yaml runs with the synthetic world's configuration (oracles read
  the rendered ground truth) on a 12-image world, and its cache round-trips (declared fields and kinds, same bytes
  when built again);
- methods: each registered method, on every row of its ablation tables, trains one step through the shared
  trainer (tiny network: the class's `tiny_params`) on those caches and embeds test images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import reid.methods  # noqa: F401  (registers the built-in methods)
from reid.cache.h5 import CacheReader
from reid.data.index import read_index, write_index
from reid.methods.base import METHODS
from reid.pipeline import params as C

REPO = Path(__file__).resolve().parents[1]
CFG = yaml.safe_load((REPO / "params.yaml").read_text())
WORLD = "synthcc"  # its params.yaml section is the configuration tested (oracle teachers, CPU presets)
TINY_TRAIN = {"epochs": 1, "batch_p": 4, "batch_k": 2, "input_size": [64, 32], "warmup_epochs": 0,
              "milestones": [1], "workers": 0, "pad": 2, "device": "cpu", "amp": False}


def _teacher_order(cfg: dict) -> list[str]:
    """Configured teachers, each after the caches its params `needs`."""
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


def _rows(method: str) -> list[str | None]:
    cls = METHODS.get(method)
    return [None, *cls.ablations, *cls.extra_ablations, *cls.eval_ablations]


METHOD_ROWS = [(m, row) for m in METHODS.names() for row in _rows(m)]


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


def _build_teacher_cache(name: str, root: Path, index: Path, out: Path, caches: dict[str, str]) -> dict:
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
    for name in _teacher_order(CFG):
        fields[name] = _build_teacher_cache(name, root, index, folder / f"{name}.h5", caches)
        caches[name] = str(folder / f"{name}.h5")
    return {"paths": caches, "fields": fields, "folder": folder}


@pytest.mark.parametrize("teacher", _teacher_order(CFG))
def test_every_configured_teacher_round_trips_its_cache(teacher: str, teacher_caches, small_world) -> None:
    root, index = small_world
    path = Path(teacher_caches["paths"][teacher])
    declared = teacher_caches["fields"][teacher]
    reader = CacheReader(path, index_path=index)
    assert reader.kinds == {k: spec.kind for k, spec in declared.items()}
    n = len(read_index(index))
    assert len(reader) == n
    for i in (0, n - 1):
        row = reader[i]
        for field, spec in declared.items():
            assert row[field].shape == tuple(spec.shape) and row[field].dtype == np.dtype(spec.dtype), field
    again = teacher_caches["folder"] / f"{teacher}.again.h5"
    _build_teacher_cache(teacher, root, index, again, teacher_caches["paths"])
    assert again.read_bytes() == path.read_bytes()  # deterministic: the same inputs give the same file


def _method_params(method: str, row: str | None, root: Path) -> dict[str, Any]:
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
            params = _method_params(method, row, root)
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


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method, row", METHOD_ROWS, ids=[f"{m}-{r or 'default'}" for m, r in METHOD_ROWS])
def test_every_method_trains_every_row_and_embeds(method: str, row: str | None, trained, small_world) -> None:
    from reid.data.dataset import ReIDDataset
    from reid.engine.inference import load_model
    from reid.engine.trainer import method_fields, open_caches

    root, index = small_world
    model_for, caches = trained
    cls = METHODS.get(method)
    base_row = cls.eval_ablations[row][0] if row in cls.eval_ablations else row
    overrides = cls.eval_ablations[row][1] if row in cls.eval_ablations else None
    path = model_for(method, base_row or None)
    m, model, ckpt = load_model(path, "cpu", overrides=overrides)
    log = (path.parent / "train_log.csv").read_text().splitlines()
    assert len(log) == 2 and "nan" not in log[1].lower()  # one epoch logged, finite losses
    rows = read_index(index)
    test = [i for i, r in enumerate(rows) if r.split != "train"]
    opened = open_caches({k: caches[k] for k in m.test_caches}, index)
    ds = ReIDDataset(rows, root, test, tuple(ckpt["input_size"]), train=False, caches=opened,
                     fields=method_fields(m, train=False), image_field=m.image_field)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        feats = m.embed(model, batch)
        dist = m.distance(feats, feats)
    assert dist.shape == (len(test), len(test)) and torch.isfinite(dist).all()
