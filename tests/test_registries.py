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

import numpy as np
import pytest
import torch
from conftest import CFG, WORLD, build_teacher_cache, teacher_order

import reid.methods  # noqa: F401  (declares the built-in methods; each is imported on its first lookup)
from reid.cache.h5 import CacheReader
from reid.data.index import read_index
from reid.methods.base import METHODS
from reid.pipeline import params as C


def _rows(method: str) -> list[str | None]:
    cls = METHODS.get(method)
    return [None, *cls.ablations, *cls.extra_ablations, *cls.eval_ablations]


METHOD_ROWS = [(m, row) for m in METHODS.names() for row in _rows(m)]


@pytest.mark.parametrize("teacher", teacher_order())
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
    build_teacher_cache(teacher, root, index, again, teacher_caches["paths"])
    assert again.read_bytes() == path.read_bytes()  # deterministic: the same inputs give the same file


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


@pytest.mark.parametrize("teacher", teacher_order())
def test_every_teacher_shards_and_merges_into_the_unsharded_bytes(teacher: str, teacher_caches, small_world) -> None:
    """Shards of any count (isp_labels: whole identities) merge into exactly the bytes of one run, so changing the
    shard count changes nothing downstream."""
    from reid.cache.h5 import merge_shards
    from reid.teachers.base import build_teacher

    root, index = small_world
    folder = teacher_caches["folder"]
    kw = C.stage_teacher(CFG, WORLD, teacher)[0]
    for n in (2, 3):
        parts = []
        for i in range(n):
            t = build_teacher(teacher, kw.get("backend", "onnx"), kw.get("model"), "cpu", teacher_caches["paths"],
                              **kw["params"])
            part = folder / f"{teacher}.shards" / f"{i}-of-{n}.h5"
            t.build_cache(index, root, part, batch_size=8, workers=0, shard=(i, n), progress=False)
            parts.append(part)
        merged = merge_shards(parts, folder / f"{teacher}.merged{n}.h5")
        assert merged.read_bytes() == Path(teacher_caches["paths"][teacher]).read_bytes(), n
