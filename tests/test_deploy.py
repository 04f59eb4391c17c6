"""The trained student outside the pipeline: ONNX export parity for every method, embed, search, pictures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

DEPLOYED = ["baseline", "deskpro", "pgfl_kd", "isp", "sureid"]


def _test_batch(method, small_world, caches, size: int, input_size) -> dict:
    """`size` test-transform samples of the small world (rows repeated as needed), with the method's test caches."""
    from reid.data.dataset import ReIDDataset
    from reid.data.index import read_index
    from reid.engine.trainer import method_fields, open_caches

    root, index = small_world
    rows = read_index(index)
    opened = open_caches({k: caches[k] for k in method.test_caches}, index)
    ds = ReIDDataset(rows, root, list(range(len(rows))), tuple(input_size), train=False, caches=opened,
                     fields=method_fields(method, train=False), image_field=method.image_field)
    return torch.utils.data.default_collate([ds[i % len(ds)] for i in range(size)])


def _normalised(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1).astype(np.float64)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", DEPLOYED)
def test_onnx_matches_pytorch_at_any_batch_size(name: str, trained, small_world, tmp_path: Path) -> None:
    from reid.deploy.embed import OnnxEmbedder, TorchEmbedder
    from reid.deploy.export import export_model

    model_for, caches = trained
    model_path = model_for(name, None)
    onnx_path, json_path = export_model(model_path, tmp_path / "onnx")
    info = json.loads(json_path.read_text())
    assert info["method"] == name and info["format"] == "reid-onnx/1"
    # the exported graph computes in float32: compare it with the float32 PyTorch model (on a CPU with native bf16
    # TorchEmbedder's default embeds in bf16, as `evaluate` does, ~1e-3 away)
    torch_side = TorchEmbedder(model_path, "cpu", cpu_amp=False)
    onnx_side = OnnxEmbedder(onnx_path, prefer_gpu=False)
    assert onnx_side.providers == ["CPUExecutionProvider"]
    for size in (1, 7):
        batch = _test_batch(torch_side.method, small_world, caches, size, torch_side.input_size)
        ref, out = torch_side(batch), onnx_side(batch)
        assert sorted(ref) == sorted(out) == sorted(o["name"] for o in info["outputs"])
        for key in ref:
            assert out[key].shape == ref[key].shape, key
            assert np.abs(_normalised(out[key]) - _normalised(ref[key])).max() <= 1e-4, (key, size)
    # the same ranking of a small gallery, with the method's own distance
    batch = _test_batch(torch_side.method, small_world, caches, 7, torch_side.input_size)
    ref, out = torch_side(batch), onnx_side(batch)
    method = onnx_side.method
    d_ref = method.distance({k: torch.from_numpy(v) for k, v in ref.items()},
                            {k: torch.from_numpy(v) for k, v in ref.items()}).numpy()
    d_out = method.distance({k: torch.from_numpy(v) for k, v in out.items()},
                            {k: torch.from_numpy(v) for k, v in out.items()}).numpy()
    np.testing.assert_allclose(d_out, d_ref, atol=1e-4)
    order_ref, order_out = np.argsort(d_ref, 1, kind="stable"), np.argsort(d_out, 1, kind="stable")
    assert (order_ref[:, :3] == order_out[:, :3]).mean() > 0.9  # ties between repeated rows may swap


def test_sureid_export_keeps_the_token_removal_in_the_graph(trained, tmp_path: Path) -> None:
    """HTS drops tokens at fixed layers with a static top-k: the exported graph holds TopK nodes."""
    import onnx

    from reid.deploy.export import export_model

    model_for, _ = trained
    onnx_path, _ = export_model(model_for("sureid", None), tmp_path / "onnx")
    ops = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    assert "TopK" in ops


MARKET = re.compile(r"^(\d{4})_c(\d)")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_export_embed_search_reproduce_the_evaluated_rank1(tmp_path: Path, capsys) -> None:
    """Train a tiny baseline on a synthocc world, evaluate it, then export, embed the query and gallery folders
    with ONNX Runtime and search: the R1 computed from the search equals metrics.json's (Market rule)."""
    from reid.cli import main as cli
    from reid.data.datasets import build_index
    from reid.data.index import write_index
    from reid.data.synthetic import generate_world
    from reid.engine.inference import evaluate_model
    from reid.engine.trainer import train

    root = generate_world("synthocc", tmp_path / "world", seed=0, scale=0.1, progress=False)
    index = write_index(build_index("synthocc", root), tmp_path / "index.csv")
    train("baseline", {"depth": 18}, index, root, tmp_path / "model",
          train_cfg={"batch_p": 4, "batch_k": 2, "input_size": [64, 32], "warmup_epochs": 0,
                     "workers": 0, "pad": 2, "device": "cpu", "amp": False, "epochs": 3})
    metrics = evaluate_model(tmp_path / "model/model.pt", index, root, "synthocc", tmp_path / "res/metrics.json",
                             workers=0, device="cpu")
    for picture in ("cmc.csv", "cmc.png", "ranks.png"):
        assert (tmp_path / "res" / picture).stat().st_size > 0
    assert cli(["export", "--model", str(tmp_path / "model/model.pt"), "--out", str(tmp_path / "onnx")]) == 0
    for model in (tmp_path / "model/model.pt", tmp_path / "onnx/model.onnx"):
        for split, folder in (("q", "query"), ("g", "bounding_box_test")):
            assert cli(["embed", "--model", str(model), "--images", str(Path(root) / folder), "--out",
                        str(tmp_path / f"{split}.{model.suffix[1:]}.h5"), "--workers", "0"]) == 0
        capsys.readouterr()
        tag = model.suffix[1:]
        assert cli(["search", "--gallery", str(tmp_path / f"g.{tag}.h5"), "--query", str(tmp_path / f"q.{tag}.h5"),
                    "--top-k", "1000", "--out", str(tmp_path / f"ranks.{tag}.json"),
                    "--sheet", str(tmp_path / f"sheet.{tag}.png")]) == 0
        printed = capsys.readouterr().out.splitlines()  # a summary, the full ranking is in the file
        assert len(printed) <= 3 * 6 + 2 and printed[-2].startswith("ranked ") and f"ranks.{tag}.json" in printed[-2]
        assert _rank1(tmp_path / f"ranks.{tag}.json") == (metrics["standard"]["num_valid_query"],
                                                         pytest.approx(metrics["standard"]["R1"], abs=1e-6)), tag


def _rank1(ranks: Path) -> tuple[int, float]:
    """(valid queries, R1 in percent) of search results under the Market rule, identities read from file names."""
    hits = []
    for r in json.loads(ranks.read_text()):
        qp, qc = MARKET.match(Path(r["query"]).name).groups()
        ranked = [MARKET.match(Path(h["path"]).name).groups() for h in r["ranked"]]
        kept = [p for p, c in ranked if not (p == qp and c == qc)]  # Market rule: same id + same camera is junk
        if qp in kept:
            hits.append(kept[0] == qp)
    return len(hits), 100.0 * float(np.mean(hits))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_deskpro_faces_come_from_the_cache_or_the_configured_teacher(trained, small_world, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A method that reads a cache at test time: given as --cache, or made on the spot by the teacher params.yaml
    configures (here synthcc's oracle faces); both give the evaluation's embeddings, face-less rows body-only."""
    from reid.cache.h5 import CacheReader
    from reid.cli import main as cli
    from reid.deploy.embed import TorchEmbedder

    model_for, caches = trained
    model = model_for("deskpro", None)
    root, index = small_world
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    common = ["embed", "--model", str(model), "--index", str(index), "--root", str(root), "--workers", "0"]
    assert cli([*common, "--cache", f"faces={caches['faces']}", "--out", str(tmp_path / "a.h5")]) == 0
    assert cli([*common, "--params", str(params), "--dataset", "synthcc", "--out", str(tmp_path / "b.h5")]) == 0
    a, b = CacheReader(tmp_path / "a.h5"), CacheReader(tmp_path / "b.h5")
    torch_side = TorchEmbedder(model, "cpu")
    ref = torch_side(_test_batch(torch_side.method, small_world, caches, len(a), torch_side.input_size))
    rows = np.arange(len(a))
    for key in ("body", "face", "has_face"):
        np.testing.assert_allclose(a.read(key, rows), ref[key], atol=1e-5)
        np.testing.assert_allclose(b.read(key, rows), ref[key], atol=1e-5)
    assert np.isfinite(a.read("face", rows)).all()
    assert cli([*common, "--out", str(tmp_path / "c.h5")]) == 1  # no detector to run
    assert "faces cache came from the oracle backend" in capsys.readouterr().err
