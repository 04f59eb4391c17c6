"""The shared teacher runner over a tiny generated index, with a test-only teacher (mean colour + label map)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from reid.cache.h5 import CacheIndexMismatch, CacheReader, h5open
from reid.data.index import IndexRow, write_index
from reid.teachers import (
    TEACHERS,
    ImageReadError,
    MissingWeights,
    Teacher,
    build_teacher,
    file_sha256,
    read_bgr,
    require_weights,
)
from reid.teachers.commands import add_arguments, add_merge_arguments, main, merge_main
from reid.teachers.runner import run_teacher

N = 12
REPO = Path(__file__).resolve().parents[1]


class ToyMean(Teacher):
    """Mean BGR colour, a 4x4 label map (grey level // 64) and the row number it was given.

    Runtime knobs (fail_after, sleep_s, marker, marker_rows) are left out of cache_params so resumed runs match.
    """

    name = "toy_mean"
    backends = ("oracle",)

    def __init__(self, backend: str, model_path=None, device: str = "cpu", **params: Any):
        super().__init__(backend, model_path, device, **params)
        self.infer_rows: list[int] = []

    def fields(self):
        return {"mean": ((3,), "float32", "vector"), "labels": ((4, 4), "uint8", "labels"),
                "row": ((), "int32", "vector")}

    def load(self, image_bgr, row, root, index=None):
        small = cv2.resize(image_bgr, (4, 4), interpolation=cv2.INTER_AREA)
        return small, index

    def infer(self, items):
        if self.params.get("sleep_s"):
            time.sleep(self.params["sleep_s"])
        batch = np.stack([s for s, _ in items])
        rows = [i for _, i in items]
        self.infer_rows += rows
        after = self.params.get("fail_after")
        if after is not None and len(self.infer_rows) > after:
            raise RuntimeError("simulated failure midway")
        if self.params.get("marker") and len(self.infer_rows) >= self.params.get("marker_rows", 4):
            Path(self.params["marker"]).touch()
        grey = cv2.cvtColor(batch.reshape(-1, 4, 3), cv2.COLOR_BGR2GRAY).reshape(len(items), 4, 4)
        return {"mean": batch.reshape(len(items), -1, 3).mean(1).astype(np.float32), "labels": grey // 64,
                "row": np.array(rows, np.int32)}

    def cache_params(self):
        own = ("fail_after", "sleep_s", "marker", "marker_rows")
        return {k: v for k, v in super().cache_params().items() if k not in own}


if "toy_mean" not in TEACHERS:
    TEACHERS.register()(ToyMean)


@pytest.fixture()
def world(tmp_path: Path) -> tuple[Path, Path]:
    """N small images of random colours + their index."""
    root = tmp_path / "root"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        rel = f"bounding_box_train/{i:04d}_c1.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), rng.integers(0, 256, (16, 8, 3), dtype=np.uint8))
        rows.append(IndexRow(rel, i // 3, 0, "", "train"))
    return write_index(rows, tmp_path / "index.csv"), root


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run(world, out: Path, workers: int = 0, shard=None, **params) -> tuple[dict, ToyMean]:
    teacher = ToyMean("oracle", **params)
    summary = run_teacher(teacher, world[0], world[1], out, batch_size=2, workers=workers, shard=shard,
                          progress=False, flush_every_s=0)
    return summary, teacher


def test_values_rows_and_summary(world, tmp_path: Path) -> None:
    summary, _ = run(world, tmp_path / "c.h5")
    r = CacheReader(tmp_path / "c.h5", world[0], expected_teacher="toy_mean")
    img = read_bgr(world[1] / r.paths[5])
    assert np.allclose(r[5]["mean"], cv2.resize(img, (4, 4), interpolation=cv2.INTER_AREA).reshape(-1, 3).mean(0))
    assert r.read("row", range(N)).tolist() == list(range(N))  # load() got the row number
    assert summary["rows_computed"] == N and summary["rows_resumed"] == 0 and summary["images_per_s"] > 0
    assert summary["provenance"]["backend"] == "oracle"


def test_worker_pool_gives_same_bytes(world, tmp_path: Path) -> None:
    run(world, tmp_path / "a.h5", workers=0)
    run(world, tmp_path / "b.h5", workers=2)
    assert sha(tmp_path / "a.h5") == sha(tmp_path / "b.h5")


def test_resume_after_exception(world, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    with pytest.raises(RuntimeError, match="simulated failure"):
        run(world, out, fail_after=4)  # batches of 2: rows 0-3 written, the third batch fails
    assert not out.exists() and out.with_name("c.h5.tmp").exists()  # atomic: only the work file
    summary, teacher = run(world, out)
    assert teacher.infer_rows == list(range(4, N))  # finished rows not recomputed
    assert summary["rows_resumed"] == 4
    run(world, tmp_path / "ref.h5")
    assert sha(out) == sha(tmp_path / "ref.h5")


def test_unreadable_image_is_named_and_loses_nothing(world, tmp_path: Path) -> None:
    bad = world[1] / "bounding_box_train/0006_c1.png"
    good = bad.read_bytes()
    bad.write_bytes(b"garbage")
    out = tmp_path / "c.h5"
    with pytest.raises(ImageReadError, match="0006_c1.png"):
        run(world, out)
    bad.write_bytes(good)
    _, teacher = run(world, out)
    assert teacher.infer_rows == list(range(6, N))


def test_shards_then_merge_equal_single_run(world, tmp_path: Path) -> None:
    run(world, tmp_path / "single.h5")
    for i in range(2):
        summary, teacher = run(world, tmp_path / f"p{i}.h5", shard=(i, 2))
        assert teacher.infer_rows == list(range(i * N // 2, (i + 1) * N // 2))
    parser = argparse.ArgumentParser()
    add_merge_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "merged.h5"), str(tmp_path / "p1.h5"), str(tmp_path / "p0.h5")])
    assert merge_main(args) == 0
    assert sha(tmp_path / "merged.h5") == sha(tmp_path / "single.h5")


def test_reader_refuses_changed_index(world, tmp_path: Path) -> None:
    run(world, tmp_path / "c.h5")
    with open(world[0], "a") as fh:
        fh.write("bounding_box_train/extra.png,9,0,,train\n")
    with pytest.raises(CacheIndexMismatch, match="rebuild"):
        CacheReader(tmp_path / "c.h5", world[0])


def _cli(world, out: Path, *extra: str) -> list[str]:
    return ["--teacher", "toy_mean", "--backend", "oracle", "--index", str(world[0]), "--root", str(world[1]),
            "--out", str(out), "--batch-size", "2", "--workers", "0", "--flush-every", "0", "--no-progress", *extra]


def test_cli_teach(world, tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(_cli(world, tmp_path / "c.h5", "--params-json", '{"tag": "x"}', "--summary",
                                  str(tmp_path / "s.json")))
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["rows_computed"] == N
    assert json.loads((tmp_path / "s.json").read_text())["teacher"] == "toy_mean"
    assert CacheReader(tmp_path / "c.h5").attrs["params"] == {"tag": "x"}


def test_sigkill_midway_then_resume_byte_identical(world, tmp_path: Path) -> None:
    out, marker = tmp_path / "c.h5", tmp_path / "marker"
    script = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); import test_runner, argparse; "
              "from reid.teachers import commands as runner; p = argparse.ArgumentParser(); runner.add_arguments(p); "
              "sys.exit(runner.main(p.parse_args(sys.argv[1:])))")
    params = json.dumps({"sleep_s": 0.3, "marker": str(marker), "marker_rows": 4})
    proc = subprocess.Popen([sys.executable, "-c", script, *_cli(world, out, "--params-json", params)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the subprocess never reached the midpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert not out.exists() and out.with_name("c.h5.tmp").exists()
    with h5open(out.with_name("c.h5.tmp")) as f:
        done_before = int(f["done"][()].sum())
    assert 0 < done_before < N
    _, teacher = run(world, out)  # same cache params: the knobs are not recorded
    assert len(teacher.infer_rows) == N - done_before
    run(world, tmp_path / "ref.h5")
    assert sha(out) == sha(tmp_path / "ref.h5")


def test_build_teacher_and_registry() -> None:
    t = build_teacher("toy_mean", "oracle", None, "auto", tag=1)
    assert isinstance(t, ToyMean) and t.device in ("cpu", "cuda") and t.model_sha256 == ""
    with pytest.raises(ValueError, match="no backend 'onnx'"):
        build_teacher("toy_mean", "onnx", None, "cpu")
    with pytest.raises(KeyError, match="unknown teacher 'nope': no module reid/teachers/nope.py"):
        build_teacher("nope", "onnx", None, "cpu")


def test_require_weights_and_file_hash(tmp_path: Path) -> None:
    with pytest.raises(MissingWeights) as err:
        require_weights(tmp_path / "schp.onnx", "SCHP LIP parsing (ONNX)", "export it with `python -m reid ...`",
                        "teachers.parsing.model")
    msg = str(err.value)
    assert "schp.onnx" in msg and "export it with" in msg and "teachers.parsing.model" in msg
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert require_weights(f, "x", "y", "z") == f
    # sha256("abc"), FIPS 180-2 test vector
    assert file_sha256(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_read_bgr_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="image not found: .*missing.png"):
        read_bgr(tmp_path / "missing.png")
    (tmp_path / "bad.jpg").write_bytes(b"\x00\x01")
    with pytest.raises(ImageReadError, match="cannot decode image .*bad.jpg"):
        read_bgr(tmp_path / "bad.jpg")
