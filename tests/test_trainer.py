"""The shared trainer and inference on the tiny world with a tiny registered method: LR schedule by hand,
bit-identical resume after an interruption, NaN guard, exported student, CSV log, metrics.json, NaN distances."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reid.cache.h5 import CacheReader
from reid.engine.inference import distance_matrix, evaluate_model, load_model
from reid.data.samplers import PKBatchSampler
from reid.engine.trainer import MODEL_FORMAT, Trainer, TrainConfig, lr_factor
from reid.methods.base import METHODS, Method
from reid.methods.losses import batch_hard_triplet, cross_entropy_label_smooth
from reid.models.heads import BNNeck

# Test-only switches (never in the method's params, so they are not part of the run's fingerprint).
FAULTS: dict[str, int | None] = {"raise_at": None, "nan_at": None}


@contextlib.contextmanager
def fault(name: str, epoch: int):
    """Arm one of FAULTS for the duration of a block, disarmed again whatever happens."""
    FAULTS[name] = epoch
    try:
        yield
    finally:
        FAULTS[name] = None


class Interrupted(RuntimeError):
    """Stands for a kill in the middle of an epoch."""


class TinyNet(nn.Module):
    """Two strided convs -> average pool -> BNNeck: a few thousand parameters, CPU-fast."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1),
        )
        self.neck = BNNeck(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feat, bn_feat, logits = self.neck(self.body(x))
        return (feat, logits) if self.training else bn_feat


class TinyMethod(Method):
    """ID + triplet on TinyNet; reads the parsing cache (so the trainer's cache path is exercised)."""

    name = "tiny_test_method"
    caches = {"parsing": ["labels"]}

    def __init__(self, triplet_margin: float = 0.3) -> None:
        super().__init__(triplet_margin=triplet_margin)
        self.margin = triplet_margin
        self.steps = 0
        self.frozen_teacher = nn.Linear(4, 4)  # lives on the method, never in the saved student

    def build_model(self, num_classes: int) -> nn.Module:
        return TinyNet(num_classes)

    def training_losses(self, model: nn.Module, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        self.steps += 1
        if FAULTS["raise_at"] is not None and epoch == FAULTS["raise_at"] and self.steps % 24 == 3:
            raise Interrupted(f"simulated kill in epoch {epoch + 1}")
        assert batch["parsing.labels"].shape[1:] == batch["image"].shape[2:]
        feat, logits = model(batch["image"])
        losses = {"id": cross_entropy_label_smooth(logits, batch["pid"], 0.1),
                  "triplet": batch_hard_triplet(feat, batch["pid"], self.margin)}
        if FAULTS["nan_at"] is not None and epoch == FAULTS["nan_at"]:
            losses["triplet"] = losses["triplet"] * float("nan")
        return losses


if TinyMethod.name not in METHODS:
    METHODS.register()(TinyMethod)


# ---------------------------------------------------------------------------------------------- lr_factor


def test_lr_factor_warmup_then_multistep_by_hand() -> None:
    cfg = TrainConfig(warmup_epochs=4, warmup_factor=0.2, scheduler="multistep", milestones=(6, 8), gamma=0.1)
    # warm-up: 0.2 + 0.8 * e / 4 -> 0.2, 0.4, 0.6, 0.8; then 1 until epoch 6, 0.1 until 8, 0.01 after.
    got = [lr_factor(e, cfg) for e in range(10)]
    expected = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    assert got == pytest.approx(expected)


def test_lr_factor_cosine_by_hand() -> None:
    cfg = TrainConfig(epochs=12, warmup_epochs=2, warmup_factor=0.1, scheduler="cosine", min_lr_factor=0.01)
    # warm-up: 0.1, 0.55; cosine over span 12 - 2 = 10: f(t) = 0.01 + 0.99 * 0.5 * (1 + cos(pi t)), t = (e-2)/10
    # e=2 -> 1.0; e=7 (t=0.5) -> 0.01 + 0.495 = 0.505; e=12 (t=1) -> 0.01.
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(1, cfg) == pytest.approx(0.55)
    assert lr_factor(2, cfg) == pytest.approx(1.0)
    assert lr_factor(7, cfg) == pytest.approx(0.505)
    assert lr_factor(12, cfg) == pytest.approx(0.01)
    assert lr_factor(4, cfg) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.2)))


def test_lr_factor_unknown_scheduler() -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'step'"):
        lr_factor(5, TrainConfig(warmup_epochs=0, scheduler="step"))


def test_train_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"train.epoch: unknown parameter of TrainConfig \(did you mean epochs"):
        TrainConfig.from_dict({"epoch": 3})
    cfg = TrainConfig.from_dict({"input_size": [64, 32], "milestones": [1]})
    assert cfg.input_size == (64, 32) and cfg.milestones == (1,)


# ---------------------------------------------------------------------------------------------- training


def _cfg(**over) -> TrainConfig:
    base = dict(epochs=2, batch_p=2, batch_k=2, input_size=(32, 16), lr=1e-3, warmup_epochs=1, milestones=(1,),
                workers=0, device="cpu", amp=False, pad=2, seed=3)
    base.update(over)
    return TrainConfig(**base)


def _trainer(world, cache: Path, out: Path, **over) -> Trainer:
    caches = {"parsing": CacheReader(cache, index_path=world.index)}
    return Trainer(TinyMethod(), world.rows, world.root, caches, out, _cfg(**over), index_hash="tiny")


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _log_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(tiny_world, tiny_parsing_cache, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run (24 steps of 2 ids x 2 images per epoch); returns its output folder."""
    out = tmp_path_factory.mktemp("run_full")
    _trainer(tiny_world, tiny_parsing_cache, out).fit()
    return out


def test_model_file_holds_the_student_only(trained: Path) -> None:
    ckpt = torch.load(trained / "model.pt", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"format", "method", "method_module", "method_params", "num_classes", "input_size",
                         "state_dict", "method_state", "index_sha256", "content_sha256", "test_teachers"}
    assert ckpt["format"] == MODEL_FORMAT and ckpt["method"] == "tiny_test_method"
    assert ckpt["num_classes"] == 4 and ckpt["input_size"] == [32, 16]
    assert set(ckpt["state_dict"]) == set(TinyNet(4).state_dict())  # no optimiser, no teacher weights
    method, model, _ = load_model(trained / "model.pt", device="cpu")
    assert isinstance(model, TinyNet) and not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][k])


def test_train_log_has_one_row_per_epoch_with_loss_terms(tiny_world, trained: Path) -> None:
    rows = _log_rows(trained / "train_log.csv")
    # 4 ids x 24 images / K=2 = 48 chunks, 2 ids per batch: at most 24 steps; fewer when the random draw leaves
    # a single identity with chunks at the end. The exact count is the sampler's, for that epoch.
    labels = [r.pid for r in tiny_world.rows if r.split == "train"]
    sampler = PKBatchSampler(labels, 2, 2, seed=3)
    steps = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        steps.append(str(len(sampler)))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "id", "triplet", "total", "lr", "steps", "seconds", "images_per_s",
                             "data_wait_share"]
    assert all(0.0 <= float(r["data_wait_share"]) <= 1.0 for r in rows)  # time blocked on the loader / epoch
    for r in rows:
        assert float(r["total"]) == pytest.approx(float(r["id"]) + float(r["triplet"]), rel=1e-4)
    assert [r["steps"] for r in rows] == steps and all(20 <= int(n) <= 24 for n in steps)
    # warm-up epoch 0 at 0.1 x lr, epoch 1 past milestone 1 at gamma x lr
    assert float(rows[0]["lr"]) == pytest.approx(1e-4) and float(rows[1]["lr"]) == pytest.approx(1e-4)


def _interrupt_and_resume(world, cache: Path, out: Path, **over) -> None:
    """Kill a run at the 3rd step of epoch 2, check what it left, then resume it to the end."""
    with fault("raise_at", 1), pytest.raises(Interrupted):
        _trainer(world, cache, out, **over).fit()
    assert not (out / "model.pt").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 0
    assert [r["epoch"] for r in _log_rows(out / "train_log.csv")] == ["1"]
    (out / "train_log.csv").unlink()  # Snakemake deletes a failed job's outputs: the rows live in the checkpoint
    resumed = _trainer(world, cache, out, **over)
    resumed.fit()
    assert resumed.start_epoch == 1


def _assert_same_run(full: Path, again: Path) -> None:
    a, b = _state(full / "model.pt"), _state(again / "model.pt")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    log_full, log_again = _log_rows(full / "train_log.csv"), _log_rows(again / "train_log.csv")
    assert [r["epoch"] for r in log_again] == ["1", "2"]
    for x, y in zip(log_full, log_again):
        assert (x["total"], x["id"], x["triplet"]) == (y["total"], y["id"], y["triplet"])


def test_interrupted_run_resumes_bit_identically(tiny_world, tiny_parsing_cache, trained: Path, tmp_path) -> None:
    _interrupt_and_resume(tiny_world, tiny_parsing_cache, tmp_path)
    _assert_same_run(trained, tmp_path)


@pytest.mark.slow
def test_resume_is_bit_identical_with_loader_workers(tiny_world, tiny_parsing_cache, tmp_path) -> None:
    # With workers the augmentation draws come from per-worker seeds derived from the per-epoch loader generator.
    _trainer(tiny_world, tiny_parsing_cache, tmp_path / "full", workers=2).fit()
    _interrupt_and_resume(tiny_world, tiny_parsing_cache, tmp_path / "resumed", workers=2)
    _assert_same_run(tmp_path / "full", tmp_path / "resumed")


def test_a_checkpoint_from_other_input_bytes_is_not_resumed(tiny_world, tiny_parsing_cache, tmp_path) -> None:
    """The cache at the same path with other content (as a pretrain stand-in remade at its path): the
    interrupted run's checkpoint belongs to another run and training starts from epoch 0."""
    import shutil

    cache = tmp_path / "parsing.h5"
    shutil.copy2(tiny_parsing_cache, cache)
    with fault("raise_at", 1), pytest.raises(Interrupted):
        _trainer(tiny_world, cache, tmp_path / "run").fit()
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 0
    assert _trainer(tiny_world, cache, tmp_path / "run").try_resume() is True  # same bytes: resumed
    with open(cache, "ab") as fh:  # other bytes at the same path (HDF5 ignores trailing bytes)
        fh.write(b"\0" * 16)
    assert _trainer(tiny_world, cache, tmp_path / "run").try_resume() is False


def test_finished_run_leaves_no_checkpoint(tiny_world, tiny_parsing_cache, trained: Path) -> None:
    # A rerun of a finished run (e.g. after a code change) must train anew, not re-export the old weights.
    assert not (trained / "checkpoint.pt").exists()
    assert _trainer(tiny_world, tiny_parsing_cache, trained).try_resume() is False


def test_checkpoint_of_another_configuration_is_not_resumed(tiny_world, tiny_parsing_cache, tmp_path) -> None:
    _trainer(tiny_world, tiny_parsing_cache, tmp_path, epochs=1).save_checkpoint(0)
    other = _trainer(tiny_world, tiny_parsing_cache, tmp_path, epochs=1, lr=5e-4)
    assert other.try_resume() is False and other.start_epoch == 0


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tiny_world, tiny_parsing_cache, tmp_path):
    with fault("nan_at", 1), pytest.raises(FloatingPointError, match=r"non-finite loss at epoch 2, step 1 "
                                                                   r"\(id=.*, triplet=nan\).*checkpoint\.pt"):
        _trainer(tiny_world, tiny_parsing_cache, tmp_path).fit()
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (tmp_path / "model.pt").exists()


# ---------------------------------------------------------------------------------------------- inference


def test_evaluate_model_writes_prcc_metrics(tiny_world, trained: Path, tmp_path) -> None:
    out = tmp_path / "metrics.json"
    returned = evaluate_model(trained / "model.pt", tiny_world.index, tiny_world.root, "synthcc", out,
                              batch_size=16, workers=0, device="cpu")
    metrics = json.loads(out.read_text())
    assert metrics == json.loads(json.dumps(returned))
    assert metrics["protocol"] == "prcc" and metrics["method"] == "tiny_test_method"
    assert metrics["num_query_images"] == 16 and metrics["num_gallery_images"] == 12
    queries = {"same_clothes": 1, "cross_clothes": 2}  # PRCC: camera B (camid 1) and C (camid 2) vs gallery A
    for setting, camid in queries.items():
        m = metrics[setting]
        n = sum(r.split == "query" and r.camid == camid for r in tiny_world.rows)
        assert m["num_query"] == n
        for key in ("R1", "R5", "mAP", "mINP"):
            assert 0.0 <= m[key] <= 100.0, (setting, key)
        # percent: R1 is a multiple of 100 / num_query
        assert m["R1"] / (100.0 / n) == pytest.approx(round(m["R1"] / (100.0 / n)))
        assert m["R1"] <= m["R5"] <= m["R10"] <= m["R20"] == pytest.approx(100.0)


class _NaNDistance(TinyMethod):
    def distance(self, q: dict, g: dict) -> torch.Tensor:
        d = torch.zeros(len(q["feat"]), len(g["feat"]))
        d[0, 1] = float("nan")
        return d


def test_distance_with_nan_is_refused() -> None:
    q, g = {"feat": torch.ones(3, 4)}, {"feat": torch.ones(5, 4)}
    with pytest.raises(FloatingPointError, match="1 non-finite values"):
        distance_matrix(_NaNDistance(), q, g)
    ok = distance_matrix(TinyMethod(), q, g, chunk=2)  # chunked over queries: 2 + 1
    assert ok.shape == (3, 5) and np.allclose(ok, 0.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- files that run code
class _Payload:
    """Pickles into a call of `Path.touch(marker)`: what a malicious .pth / model.pt / checkpoint.pt would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious(path: Path, marker: Path, wrap: dict | None = None) -> Path:
    torch.save({**(wrap or {}), "payload": _Payload(marker)}, path)
    assert not marker.exists()
    return path


@pytest.mark.parametrize("kind", ["weights", "model", "isp_labels"])
def test_a_pickle_payload_never_runs_and_the_error_names_the_file(tmp_path: Path, kind: str) -> None:
    from reid.engine.inference import load_model
    from reid.models.resnet import load_state_dict_file
    from reid.serialization import UnsafeFileError
    from reid.engine.isp_iou import _read_labels

    marker = tmp_path / "pwned"
    bad = _malicious(tmp_path / f"{kind}.pth", marker, {"format": MODEL_FORMAT, "state_dict": {}})
    load = {"weights": lambda: load_state_dict_file(bad), "model": lambda: load_model(bad, "cpu"),
            "isp_labels": lambda: _read_labels(bad.rename(tmp_path / "m.pt"), tmp_path / "i.csv", np.arange(1))}[kind]
    with pytest.raises(UnsafeFileError, match=r"refused.*could run code") as info:
        load()
    assert str(tmp_path) in str(info.value)
    assert not marker.exists()


def test_an_unusable_checkpoint_is_moved_aside_and_training_restarts(tiny_world, tiny_parsing_cache, tmp_path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "pwned"
    for content in (b"", b"garbage, not a zip", None):
        path = tmp_path / "checkpoint.pt"
        if content is None:
            _malicious(path, marker)
        else:
            path.write_bytes(content)
        trainer = _trainer(tiny_world, tiny_parsing_cache, tmp_path, epochs=1)
        with caplog.at_level(logging.WARNING):
            assert trainer.try_resume() is False and trainer.start_epoch == 0
        assert "checkpoint.pt" in caplog.text and "moved it aside" in caplog.text and not path.exists()
        caplog.clear()
        for p in tmp_path.glob("checkpoint.pt.unusable-*"):
            p.unlink()
    assert not marker.exists()


def test_model_and_checkpoint_load_weights_only(trained: Path, tiny_world, tiny_parsing_cache, tmp_path) -> None:
    torch.load(trained / "model.pt", map_location="cpu", weights_only=True)  # no pickled objects inside
    _trainer(tiny_world, tiny_parsing_cache, tmp_path, epochs=1).save_checkpoint(0)
    ckpt = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert set(ckpt["rng"]["numpy"]) == {"name", "keys", "pos", "has_gauss", "cached_gaussian"}


def test_an_old_model_format_is_a_clear_error(tmp_path: Path) -> None:
    from reid.engine.inference import load_model

    from reid.serialization import save_file

    save_file({"format": "reid-model/2", "state_dict": {}}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model.pt: not a reid-model/3 file.*older version.*train it again"):
        load_model(tmp_path / "model.pt", "cpu")


def test_safetensors_weights_are_accepted(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from reid.models.resnet import load_state_dict_file

    save_file({"fc.weight": torch.ones(2, 3)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(load_state_dict_file(tmp_path / "w.safetensors")["fc.weight"], torch.ones(2, 3))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="bad.safetensors: not a readable safetensors"):
        load_state_dict_file(tmp_path / "bad.safetensors")


def test_evaluate_without_query_rows_is_a_clear_error(tiny_world, trained: Path, tmp_path) -> None:
    from reid.data.index import write_index

    index = write_index([r for r in tiny_world.rows if r.split != "query"], tmp_path / "no_query.csv")
    with pytest.raises(ValueError, match=r"no_query.csv: no query rows to evaluate"):
        evaluate_model(trained / "model.pt", index, tiny_world.root, "synthcc", tmp_path / "m.json", workers=0,
                       device="cpu")


def test_degenerate_features_are_refused() -> None:
    from reid.engine.inference import check_not_degenerate

    same = {"query": {"feat": torch.zeros(4, 8)}, "gallery": {"feat": torch.randn(5, 8)}}
    with pytest.raises(ValueError, match=r"m.pt: every query image has the same 'feat' feature.*degenerate"):
        check_not_degenerate(same, "m.pt")
    check_not_degenerate({"query": {"feat": torch.randn(4, 8), "has_face": torch.zeros(4)}}, "m.pt")  # flags skip
    no_faces = {"query": {"body": torch.randn(3, 7, 4), "face": torch.zeros(3, 7, 4), "has_face": torch.zeros(3)}}
    check_not_degenerate(no_faces, "m.pt")  # DeSKPro: face-less images have zero face embeddings by design
    with pytest.raises(FloatingPointError, match="non-finite"):
        check_not_degenerate({"gallery": {"feat": torch.tensor([[1.0, float("nan")], [0.0, 1.0]])}}, "m.pt")


def test_nan_loss_in_the_first_epoch_cites_no_checkpoint(tiny_world, tiny_parsing_cache, tmp_path) -> None:
    with fault("nan_at", 0), pytest.raises(FloatingPointError, match=r"epoch 1, step 1 .*No epoch finished, so "
                                                                   r"there is no checkpoint to resume"):
        _trainer(tiny_world, tiny_parsing_cache, tmp_path).fit()


# ---------------------------------------------------------------------------------------------- CPU bfloat16


def test_autocast_dtype_per_device_and_cpu_support(monkeypatch: pytest.MonkeyPatch) -> None:
    """float16 on CUDA with `amp`; bfloat16 on CPU only when asked for and the CPU multiplies bf16 natively (an
    emulated bf16 is slower than float32, so such a CPU stays in float32); float32 otherwise."""
    import reid.device as D

    assert D.autocast_dtype("cuda", True, False) == torch.float16
    assert D.autocast_dtype("cuda", False, True) is None
    monkeypatch.setattr(D, "cpu_bf16_usable", lambda: True)
    assert D.autocast_dtype("cpu", True, True) == torch.bfloat16
    assert D.autocast_dtype("cpu", True, False) is None
    monkeypatch.setattr(D, "cpu_bf16_usable", lambda: False)
    assert D.autocast_dtype("cpu", True, True) is None


def test_a_cpu_whose_bf16_convolution_is_wrong_computes_in_float32(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """PyTorch 2.14's oneDNN bf16 kernel on an AMX Xeon returns relative errors > 1 (or inf) for a 3x3 stride-2
    convolution of a 4x2 map: the probe measures such a kernel as wrong and one that computes in float32 and
    rounds to bf16 as right, and a wrong kernel turns cpu_amp off with a warning."""
    import torch.nn.functional as F

    import reid.device as D

    real = F.conv2d

    def rounded(x, w, *args):  # a correct bf16 kernel: float32 arithmetic, output rounded to bf16
        out = real(x.float(), w.float(), *args)
        return out.to(x.dtype)

    def broken(x, w, *args):  # the measured fault: garbage in half of the outputs
        out = rounded(x, w, *args)
        if x.dtype == torch.bfloat16:
            out = out.clone()
            out[::2] = 1e30
        return out

    monkeypatch.setattr(F, "conv2d", rounded)
    assert D.bf16_conv_error() < D.BF16_CONV_TOLERANCE
    monkeypatch.setattr(F, "conv2d", broken)
    assert D.bf16_conv_error() > 1.0
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: True)
    D.cpu_bf16_usable.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="reid.device"):
            assert D.cpu_bf16_usable() is False
        assert "bfloat16 convolution is wrong" in caplog.text and torch.__version__ in caplog.text
        monkeypatch.setattr(F, "conv2d", rounded)
        D.cpu_bf16_usable.cache_clear()
        assert D.cpu_bf16_usable() is True
    finally:
        D.cpu_bf16_usable.cache_clear()


@pytest.mark.skipif(not __import__("reid.device", fromlist=["x"]).cpu_bf16_usable(),
                    reason="this CPU has no native bfloat16 (AMX / AVX512-BF16), or its bf16 convolution is wrong")
def test_cpu_amp_trains_in_bfloat16_and_evaluates_close_to_float32(tiny_world, tiny_parsing_cache, trained: Path,
                                                                   tmp_path, caplog) -> None:
    """`train.cpu_amp`: the step runs under bf16 autocast on NHWC weights, the saved model is float32; with
    `cpu_amp` at evaluation the features come back float32 and within bf16's precision of the float32 ones."""
    from reid.data.dataset import ReIDDataset
    from reid.engine.inference import extract

    tr = _trainer(tiny_world, tiny_parsing_cache, tmp_path / "bf16", cpu_amp=True, epochs=1)
    assert tr.autocast_dtype == torch.bfloat16 and tr.channels_last
    seen = []
    orig = TinyMethod.training_losses

    def spy(self, model, batch, epoch):
        seen.append((torch.get_autocast_dtype("cpu"), torch.is_autocast_enabled("cpu"),
                     batch["image"].is_contiguous(memory_format=torch.channels_last)))
        return orig(self, model, batch, epoch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TinyMethod, "training_losses", spy)
        tr.fit()
    assert seen and all(s == (torch.bfloat16, True, True) for s in seen)
    state = _state(tmp_path / "bf16" / "model.pt")
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    method, model, ckpt = load_model(trained / "model.pt", device="cpu")
    ds = ReIDDataset(tiny_world.rows, tiny_world.root, [i for i, r in enumerate(tiny_world.rows) if r.split == "query"],
                     tuple(ckpt["input_size"]), train=False)
    f32 = extract(method, model, ds, batch_size=8, workers=0)["feat"]
    b16 = extract(method, model, ds, batch_size=8, workers=0, cpu_amp=True)["feat"]
    assert b16.dtype == torch.float32 and not torch.equal(b16, f32)  # it did run in bf16
    cos = torch.nn.functional.cosine_similarity(b16, f32, dim=1)
    assert float(cos.min()) > 0.99
    metrics = evaluate_model(trained / "model.pt", tiny_world.index, tiny_world.root, "synthcc", tmp_path / "m.json",
                             batch_size=16, workers=0, device="cpu", cpu_amp=True)
    assert metrics["embed_dtype"] == "bfloat16"
