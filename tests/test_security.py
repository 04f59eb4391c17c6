"""The reliability probe's cases (issue 33), each as a test that failed before: no file the pipeline reads chooses
code; values that make no sense are refused at every entry point; bombs are refused before they expand; names
cannot reach a shell; user errors are one line naming the file or key."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from reid.cli import main as cli
from reid.pipeline import params as C
from reid.settings import ParamsError

REPO = Path(__file__).resolve().parents[1]
MARKER_MODULE = "reid_helpers_marker"


# ------------------------------------------------------------------------------------------- no file chooses code
@pytest.fixture()
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module beside a downloaded model that would leave a file behind if it were ever imported."""
    flag = tmp_path / "imported"
    (tmp_path / f"{MARKER_MODULE}.py").write_text(f"open({str(flag)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(MARKER_MODULE, None)
    yield flag
    sys.modules.pop(MARKER_MODULE, None)


def _model_file(path: Path, method: str, module: str) -> Path:
    from reid.engine.trainer import MODEL_FORMAT
    from reid.methods.base import build_method
    from reid.serialization import save_file

    m = build_method("baseline", depth=18)
    save_file({"format": MODEL_FORMAT, "method": method, "method_module": module, "method_params": m.params,
               "num_classes": 3, "input_size": [64, 32], "state_dict": m.build_model(3).state_dict(),
               "method_state": {}}, path)
    return path


@pytest.mark.parametrize("method", ["baseline", "marker_method"])
def test_a_model_file_never_imports_the_module_it_names(marker: Path, tmp_path: Path, method: str) -> None:
    from reid.engine.inference import load_model

    path = _model_file(tmp_path / "model.pt", method, MARKER_MODULE)
    if method == "baseline":  # a registered method loads; the recorded module is never imported
        assert load_model(path, "cpu")[0].name == "baseline"
    else:
        with pytest.raises(ValueError, match=rf"model.pt: names method 'marker_method', which is not registered.*"
                                             rf"plugin module '{MARKER_MODULE}'.*reid --plugin"):
            load_model(path, "cpu")
    assert not marker.exists() and MARKER_MODULE not in sys.modules


def test_model_json_and_embeddings_never_import_the_module_they_name(marker: Path, tmp_path: Path) -> None:
    from reid.cache.h5 import CacheWriter
    from reid.deploy.embed import OnnxEmbedder
    from reid.deploy.search import load_embeddings, method_of

    from reid.hashing import file_sha256
    from reid.serialization import write_json_file

    (tmp_path / "model.onnx").write_bytes(b"not read")
    write_json_file({"method": "marker_method", "method_module": MARKER_MODULE, "method_params": {},
                     "input_size": [64, 32], "outputs": [], "onnx_sha256": file_sha256(tmp_path / "model.onnx")},
                    tmp_path / "model.json")
    with pytest.raises(ValueError, match="model.json: names method 'marker_method', which is not registered"):
        OnnxEmbedder(tmp_path / "model.onnx", prefer_gpu=False)
    with CacheWriter(tmp_path / "g.h5", teacher="embed:x", backend="torch", model_sha256="", index_sha256="x",
                     params={"method": "marker_method", "method_module": MARKER_MODULE, "method_params": {},
                             "root": str(tmp_path)},
                     paths=["a.jpg"], fields={"feat": ((4,), "float32", "vector")}) as w:
        w.write_rows([0], {"feat": np.ones((1, 4), np.float32)})
        w.finalize()
    _, _, params = load_embeddings(tmp_path / "g.h5")
    with pytest.raises(ValueError, match="names method 'marker_method', which is not registered"):
        method_of(params)
    assert not marker.exists() and MARKER_MODULE not in sys.modules


def test_the_user_names_a_plugin_on_the_command_line(marker: Path) -> None:
    with pytest.raises(SystemExit):  # --help exits after the plugin was imported: the user's explicit choice
        cli(["--plugin", MARKER_MODULE, "show-metrics", "--help"])
    assert marker.exists()


# -------------------------------------------------------------------------------- values that make no sense
@pytest.mark.parametrize("cfg, message", [
    ({"epochs": -3}, r"train.epochs: -3 is out of range \(expected >= 1\)"),
    ({"input_size": [0, 32]}, r"train.input_size\[0\]: 0 is out of range"),
    ({"epochs": "two"}, r"train.epochs: expected int, got 'two'"),
    ({"erasing_p": 1.5}, r"train.erasing_p: 1.5 is out of range \(expected in \[0, 1\]\)"),
    ({"epocs": 3}, r"train.epocs: unknown parameter"),
])
def test_train_settings_are_typed_and_ranged(cfg: dict, message: str) -> None:
    from reid.engine.trainer import TrainConfig

    with pytest.raises(ParamsError, match=message):
        TrainConfig.from_dict(cfg)


def test_params_yaml_ranges_and_top_level_keys_are_checked_on_the_dvc_route(tmp_path: Path) -> None:
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    bad = {**base, "trian": {"epochs": 2}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(C.ConfigError, match=r"(?s)p.yaml: 1 problem.*\(top level\): Additional properties.*'trian'"):
        C.load_params(tmp_path / "p.yaml")
    ranged = yaml.safe_load((REPO / "params.yaml").read_text())
    ranged["train"]["epochs"] = -3
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(ranged))
    with pytest.raises(ValueError, match=r"train.epochs: -3 is (less than the minimum of 1|out of range)"):
        C.load_params(tmp_path / "p.yaml")
    ranged["train"]["epochs"] = 2
    ranged["datasets"]["synthcc"].setdefault("train", {})["erasing_p"] = 1.5  # past the schema: TrainConfig.RANGES
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(ranged))
    with pytest.raises(ParamsError,
                       match=r"datasets.synthcc.train.erasing_p: 1.5 is out of range \(expected in \[0, 1\]\)"):
        C.load_params(tmp_path / "p.yaml")


def test_verb_json_options_are_checked_like_params_yaml(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--index", str(tmp_path / "i.csv"), "--root", str(tmp_path), "--out", str(tmp_path / "out")]
    assert cli(["train", "--method", "baseline", "--train-cfg", '{"epochs": "two"}', *args]) == 1
    assert "reid train: error: --train-cfg.epochs: expected int, got 'two'" in capsys.readouterr().err
    assert cli(["train", "--method", "baseline", "--method-params", '{"dept": 18}', *args]) == 1
    assert "--method-params.dept: unknown parameter of method baseline" in capsys.readouterr().err
    assert cli(["teach", "--teacher", "keypoints", "--backend", "oracle", "--params-json", '{"out_sise": [8, 4]}',
                *args[:4], "--out", str(tmp_path / "k.h5")]) == 1
    assert "teacher keypoints parameters.out_sise: unknown parameter" in capsys.readouterr().err
    assert cli(["pretrain", "--arch", "resnet18", "--config", '{"epochs": -1}', *args[:4], "--out",
                str(tmp_path / "w.pth")]) == 1
    assert "pretrain.epochs: -1 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "w.pth").exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------- bombs
def test_a_yaml_alias_bomb_is_refused_in_moments(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    bomb = "\n".join(["unknown:"] + [f"  {line}" for line in lines]) + "\n"
    assert len(bomb) < 1200  # 10^9 values once expanded
    text = (REPO / "params.yaml").read_text() + bomb
    (tmp_path / "p.yaml").write_text(text)
    start = time.perf_counter()
    with pytest.raises(C.ConfigError, match=r"p.yaml: more than 100,000 values once YAML aliases are expanded"):
        C.load_params(tmp_path / "p.yaml")
    assert time.perf_counter() - start < 5


def _png_header_bomb(path: Path, side: int) -> Path:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (side * 3 + 1) * 8)  # a few rows: the header alone declares the size
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_an_image_beyond_the_pixel_budget_is_refused_naming_the_file(tmp_path: Path) -> None:
    from reid.data.datasets import image_problem
    from reid.data.images import ImageReadError, read_rgb

    bomb = _png_header_bomb(tmp_path / "0001_c1_f0001.png", 30000)
    assert bomb.stat().st_size < 100_000
    assert "declares 900,000,000 pixels, over the budget" in image_problem(bomb)
    with pytest.raises(ImageReadError, match=r"0001_c1_f0001.png.*declares 900,000,000 pixels"):
        read_rgb(bomb)


# ----------------------------------------------------------------------------------------- names and the shell
def test_a_dataset_name_with_shell_syntax_is_refused(tmp_path: Path) -> None:
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["datasets"]["p$(touch X)"] = cfg["datasets"]["synthcc"]
    with pytest.raises(C.ConfigError, match=r"names may hold only letters.*datasets.'p\$\(touch X\)'"):
        C.validate(cfg)


def test_every_wildcard_in_a_shell_command_is_quoted() -> None:
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        text = rules.read_text()
        unquoted = re.findall(r"\{wildcards\.\w+\}", text) + re.findall(r"\{params\.(?:run|dataset)\}", text)
        assert not unquoted, f"{rules.name}: {unquoted}"


# ------------------------------------------------------------------------------- clear errors, not tracebacks
def test_a_zero_byte_image_is_named_at_index(tmp_path: Path) -> None:
    from reid.data.datasets import image_problem

    (tmp_path / "a.jpg").write_bytes(b"")
    assert image_problem(tmp_path / "a.jpg") == "empty file (0 bytes)"


@pytest.mark.parametrize("row, message", [
    ("q/a.jpg,1O,0,,query", r"i.csv, line 2: pid '1O' and camid '0' must be integers"),
    ("../../secret.jpg,1,0,,query", r"i.csv, line 2: path '../../secret.jpg' leaves the dataset root"),
    ("/etc/passwd,1,0,,query", r"i.csv, line 2: path '/etc/passwd' leaves the dataset root"),
    ("q/a.jpg,1,0", r"i.csv, line 2: 3 fields, expected 5"),
])
def test_a_malformed_index_row_names_the_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    from reid.data.index import read_index

    (tmp_path / "i.csv").write_text("path,pid,camid,clothes,split\n" + row + "\n")
    with pytest.raises(ValueError, match=message):
        read_index(tmp_path / "i.csv")


def test_an_object_dtype_field_is_refused() -> None:
    from reid.cache.h5 import check_field

    with pytest.raises(ValueError, match=r"field 'feat' has dtype object: cache fields are fixed-size numbers"):
        check_field("feat", ((4,), "O", "vector"))


def _embeddings(path: Path, feat: np.ndarray) -> Path:
    from reid.cache.h5 import CacheWriter

    with CacheWriter(path, teacher="embed:baseline", backend="torch", model_sha256="", index_sha256="x",
                     params={"method": "baseline", "method_params": {"depth": 18}, "root": str(path.parent)},
                     paths=[f"{i}.jpg" for i in range(len(feat))],
                     fields={"feat": (feat.shape[1:], "float32", "vector")}) as w:
        w.write_rows(range(len(feat)), {"feat": feat.astype(np.float32)})
        w.finalize()
    return path


def test_search_refuses_nan_features_mismatched_dimensions_and_a_negative_top_k(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    g = _embeddings(tmp_path / "g.h5", np.eye(3, 4))
    nan = np.ones((2, 4))
    nan[1, 2] = np.nan
    q = _embeddings(tmp_path / "q.h5", nan)
    assert cli(["search", "--gallery", str(g), "--query", str(q)]) == 1
    assert re.search(r"q.h5: 1 rows have NaN or infinite 'feat' \(first: row 1, 1.jpg\)", capsys.readouterr().err)
    q8 = _embeddings(tmp_path / "q8.h5", np.ones((2, 8)))
    assert cli(["search", "--gallery", str(g), "--query", str(q8)]) == 1
    assert "were embedded differently: fields {'feat': (8,)} vs {'feat': (4,)}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["search", "--gallery", str(g), "--query", str(g), "--top-k", "-2"])
    assert "expected a positive integer, got -2" in capsys.readouterr().err


def test_show_metrics_on_an_empty_object_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "metrics.json").write_text("{}")
    assert cli(["show-metrics", str(tmp_path / "metrics.json")]) == 1
    assert "metrics.json: not a metrics file written by `reid evaluate`" in capsys.readouterr().err


def test_inspect_checks_the_index_it_is_given(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.test_cache import fill

    cache = fill(tmp_path / "c.h5", [range(10)])
    (tmp_path / "other.csv").write_text("path,pid,camid,clothes,split\n")
    assert cli(["inspect", str(cache), "--index", str(tmp_path / "other.csv")]) == 1
    assert "c.h5 was built for an index with sha256" in capsys.readouterr().err
