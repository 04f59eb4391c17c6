"""Damage never passes as data: single-byte flips over a cache, a model file and a checkpoint, each either refused
with an error naming the file or read back unchanged (a flip in padding or unused space)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reid.cache.h5 import CacheCorrupt, CacheError, CacheReader
from reid.serialization import CorruptFileError, UnsafeFileError, load_file, save_file

from tests.test_cache import N, fill


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0xFF
    return bytes(out)


def _read_cache(path: Path) -> dict:
    reader = CacheReader(path)
    content = {"paths": reader.paths, "attrs": reader.attrs,
               "rows": [reader[i] for i in range(len(reader))]}
    assert reader.verify() == []
    reader.close()
    return content


def _same(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def _offsets(size: int, stride: int) -> list[int]:
    """Every `stride`-th byte, shifted so that consecutive sweeps hit different bytes, plus the first 4 KB (the
    superblock / headers, where damage is most varied)."""
    return sorted(set(range(0, min(size, 4096), 7)) | set(range(3, size, stride)))


@pytest.mark.parametrize("stride", [37])
def test_every_flip_of_a_cache_is_refused_or_changes_nothing(tmp_path: Path, stride: int) -> None:
    good = fill(tmp_path / "c.h5", [range(N)])
    original, data = _read_cache(good), good.read_bytes()
    bad = tmp_path / "bad.h5"
    refused = unchanged = 0
    for offset in _offsets(len(data), stride):
        bad.write_bytes(_flip(data, offset))
        try:
            content = _read_cache(bad)
        except (CacheError, AssertionError) as exc:
            assert isinstance(exc, AssertionError) or str(bad) in str(exc), exc
            refused += 1
            continue
        assert _same(content, original), f"a flip at byte {offset} changed the content and passed as data"
        unchanged += 1
    assert refused > 50 and unchanged > 0, (refused, unchanged)


def _checkpoint() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"format": "x", "epoch": 3, "history": [{"loss": 1.5}], "model": {
        "w": torch.randn(8, 4, generator=g), "b": torch.arange(6, dtype=torch.int64),
        "h": torch.randn(5, generator=g).half()}}


def test_every_flip_of_a_model_file_is_refused_or_changes_nothing(tmp_path: Path) -> None:
    good = tmp_path / "model.pt"
    save_file(_checkpoint(), good)
    original, data = load_file(good, "model", require_digest=True), good.read_bytes()
    assert _same(original, _checkpoint())
    bad = tmp_path / "bad.pt"
    refused = unchanged = 0
    for offset in range(len(data)):
        bad.write_bytes(_flip(data, offset))
        try:
            content = load_file(bad, "model", require_digest=True)
        except (CorruptFileError, UnsafeFileError) as exc:
            assert str(bad) in str(exc)
            refused += 1
            continue
        assert _same(content, original), f"a flip at byte {offset} changed the content and passed as data"
        unchanged += 1
    assert refused > len(data) // 2, (refused, unchanged)


def test_a_file_written_without_its_checksum_is_refused_when_one_is_required(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2)}, plain)
    assert torch.equal(load_file(plain)["w"], torch.ones(2))  # third-party weights: the zip CRCs are checked
    with pytest.raises(CorruptFileError, match=r"plain.pt: no content checksum"):
        load_file(plain, "model", require_digest=True)


# ------------------------------------------------------------------------------------------ one writer per output
def test_a_second_writer_of_the_same_cache_is_refused_naming_the_holder(tmp_path: Path) -> None:
    from reid.locking import OutputLocked

    from tests.test_cache import values, writer

    first = writer(tmp_path / "kp.h5")
    first.write_rows([0, 1], values([0, 1]))
    with pytest.raises(OutputLocked, match=r"kp.h5: another cache writer holds it \(pid \d+ on .*\)"):
        writer(tmp_path / "kp.h5")
    first.write_rows(range(2, N), values(range(2, N)))
    first.finalize()
    assert not (tmp_path / "kp.h5.lock").exists()
    again = writer(tmp_path / "kp.h5")  # released: a later writer proceeds
    again.close()


def test_two_concurrent_teach_processes_publish_one_intact_cache(tmp_path: Path) -> None:
    """The issue's race, as two processes: one writes, the other is refused at once; the cache verifies."""
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tests.test_cache import N, values, writer\n"
        "w = writer(Path(sys.argv[1]))\n"
        "for r in range(N):\n"
        "    w.write_rows([r], values([r])); time.sleep(0.1)\n"
        "w.finalize()\n"
    )
    out = tmp_path / "kp.h5"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(out)], stderr=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1]) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 1], results
    assert "another cache writer holds it" in next(err for rc, err in results if rc == 1)
    assert _read_cache(out)["paths"][0] == "train/000.png"


# --------------------------------------------------------------------------------------------------- full disks
_FILL = """
import resource, signal, sys
import numpy as np
from reid.cache.h5 import CacheWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[2])
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
paths = [f"p{i}.png" for i in range(200)]
rng = np.random.default_rng(0)
with CacheWriter(sys.argv[1], teacher="t", backend="b", model_sha256="", params={}, index_sha256="x", paths=paths,
                 fields={"x": ((64, 64), "float32", "vector")}, flush_every_s=0) as w:
    for start in w.pending_rows()[::10]:
        rows = list(range(int(start), int(start) + 10))
        w.write_rows(rows, {"x": np.stack([np.random.default_rng(r).random((64, 64), dtype=np.float32)
                                           for r in rows])})
    w.finalize()
print("finished")
"""


def test_a_full_disk_is_a_clean_error_and_the_rerun_finishes(tmp_path: Path) -> None:
    """HDF5 cannot recover from a failed write (it segfaulted at close before): the writer stops with an error
    naming the work file, removes it, and a rerun with space builds the cache. The file-size limit stands in for a
    full disk (the same failed write(2), without root to mount a small filesystem)."""
    import subprocess
    import sys

    out = tmp_path / "c.h5"
    run = lambda limit: subprocess.run([sys.executable, "-c", _FILL, str(out), str(limit)], capture_output=True,
                                       text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    full = run(500_000)
    assert full.returncode == 1, (full.returncode, full.stderr[-2000:])  # an exception, not SIGSEGV (-11)
    assert "c.h5.tmp: writing failed" in full.stderr and "File too large" in full.stderr
    assert not out.exists() and not (tmp_path / "c.h5.tmp").exists()
    again = run(0)
    assert again.returncode == 0 and "finished" in again.stdout, again.stderr[-2000:]
    reader = CacheReader(out)
    assert reader.verify() == [] and np.array_equal(reader[7]["x"], np.random.default_rng(7).random((64, 64),
                                                                                                 dtype=np.float32))


def test_low_free_space_stops_before_writing_and_the_work_file_resumes(tmp_path: Path, monkeypatch) -> None:
    import shutil as sh

    from tests.test_cache import values, writer

    w = writer(tmp_path / "c.h5")
    w.write_rows([0, 1, 2], values([0, 1, 2]))
    real = sh.disk_usage
    monkeypatch.setattr("reid.cache.h5.shutil.disk_usage", lambda p: real(p)._replace(free=1 << 20))
    with pytest.raises(CacheError, match=r"c.h5.tmp: only 1 MiB free on its disk.*the 3 rows written so far resume"):
        w.write_rows([3], values([3]))
    w.close()
    monkeypatch.setattr("reid.cache.h5.shutil.disk_usage", real)
    w = writer(tmp_path / "c.h5")
    assert w.resumed_rows == 3
    w.write_rows(range(3, N), values(range(3, N)))
    w.finalize()
    assert _read_cache(tmp_path / "c.h5")["paths"][9] == "train/009.png"


def test_a_changed_model_json_or_a_replaced_onnx_file_is_refused(tmp_path: Path) -> None:
    from reid.deploy.embed import OnnxEmbedder
    from reid.hashing import file_sha256
    from reid.serialization import read_json_file, write_json_file

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"graph bytes")
    info = {"method": "baseline", "method_params": {"depth": 18}, "input_size": [64, 32], "outputs": [],
            "onnx_sha256": file_sha256(onnx)}
    path = write_json_file(info, tmp_path / "model.json")
    assert read_json_file(path) == info
    path.write_text(path.read_text().replace("64", "65"))  # an edited input size: refused, never used
    with pytest.raises(CorruptFileError, match=r"model.json: damaged model.json \(its content does not match"):
        OnnxEmbedder(onnx, prefer_gpu=False)
    write_json_file(info, path)
    onnx.write_bytes(b"another graph")
    with pytest.raises(CorruptFileError, match=r"model.onnx: does not match the model.json beside it"):
        OnnxEmbedder(onnx, prefer_gpu=False)
