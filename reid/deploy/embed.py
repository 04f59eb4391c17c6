"""`python -m reid embed`: a folder of crops or an index -> an HDF5 file of embeddings, from model.pt or model.onnx.

The file is a cache in the project's format (reid/cache/h5.py: atomic, verified, one row per image, `path`
dataset) whose fields are the method's test-time outputs (e.g. `feat`; ISP's `parts` + `visibility`; DeSKPro's
`body`, `face`, `has_face`), plus `pid`/`camid` when the images come from an index. Its `params` attribute records
the method and its parameters, so `python -m reid search` compares two files with the method's own distance.

Preprocessing is the evaluation's (reid/data/dataset.py, test transform), whichever backend runs the network.
Caches the method reads at test time (DeSKPro's faces) come from `--cache NAME=PATH` (index rows) or are made on
the spot by the teacher params.yaml configures (`--params params.yaml --dataset DS`): a missing face is DeSKPro's
body-only rule, never NaN.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from reid.data.index import IndexRow, read_index, write_index
from reid.engine.inference import DEFAULT_CPU_AMP
from reid.methods.base import Method, method_from_record
from reid.hashing import file_sha256
from reid.serialization import CorruptFileError, read_json_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class TorchEmbedder:
    """model.pt through PyTorch: the method's own `embed`, in the precision `evaluate` uses (`cpu_amp`), so an
    embedding here equals the one behind metrics.json."""

    backend = "torch"

    def __init__(self, model_path: str | Path, device: str = "auto", cpu_amp: bool = DEFAULT_CPU_AMP) -> None:
        from reid.engine.inference import for_extraction, load_model

        self.path = Path(model_path)
        self.method, model, ckpt = load_model(self.path, device)
        self.model, self.dtype = for_extraction(model, cpu_amp)  # as `extract` runs it
        self.input_size = tuple(ckpt["input_size"])
        self.test_teachers = dict(ckpt.get("test_teachers") or {})
        self.providers = [str(next(self.model.parameters()).device)]

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        from reid.engine.inference import embed_batch

        return {k: v.float().cpu().numpy() for k, v in embed_batch(self.method, self.model, batch, self.dtype).items()}


class OnnxEmbedder:
    """model.onnx (+ the model.json beside it) through ONNX Runtime."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: str | Path, prefer_gpu: bool = True) -> None:
        from reid.teachers.onnx_utils import create_session

        self.path = Path(onnx_path)
        info_path = self.path.with_name("model.json")
        if not info_path.is_file():
            raise FileNotFoundError(f"{info_path} not found: `python -m reid export` writes it beside {self.path}")
        self.info = read_json_file(info_path, "model.json")
        found = file_sha256(self.path)
        if self.info.get("onnx_sha256") != found:
            raise CorruptFileError(f"{self.path}: does not match the model.json beside it (sha256 {found[:16]}..., "
                                   f"model.json says {str(self.info.get('onnx_sha256'))[:16]}...): damaged or "
                                   "replaced; export again")
        self.method = method_from_record(self.info["method"], self.info["method_params"],
                                         self.info.get("method_module"), str(info_path))
        self.input_size = tuple(self.info["input_size"])
        self.test_teachers = dict(self.info.get("test_teachers") or {})
        self.session, self.providers = create_session(self.path, prefer_gpu=prefer_gpu)
        self.outputs = [o["name"] for o in self.info["outputs"]]

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        from reid.deploy.export import graph_inputs

        feed = graph_inputs(self.method, batch, self.input_size)
        return dict(zip(self.outputs, self.session.run(self.outputs, feed)))


def open_embedder(path: str | Path, device: str = "auto", cpu_amp: bool = DEFAULT_CPU_AMP) -> TorchEmbedder | OnnxEmbedder:
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxEmbedder(path, prefer_gpu=device != "cpu")
    return TorchEmbedder(path, device, cpu_amp)


def folder_rows(folder: str | Path) -> list[IndexRow]:
    """Every image under `folder` (any layout, recursive, sorted), as index rows without identities."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return [IndexRow(p.relative_to(folder).as_posix(), -1, -1, "", "query") for p in paths]


def _recorded_teacher(name: str, record: dict[str, Any], model_file: str | None) -> dict[str, Any]:
    """The teacher a model recorded (`test_teachers`), as `stage_teacher` would resolve it, with the user's file for
    it: the same file the training caches came from (its sha256 is checked), never another one."""
    if record["backend"] == "oracle":
        raise SystemExit(f"the model's {name} cache came from the oracle backend (a synthetic world's ground truth), "
                         f"which new images do not have: pass --cache {name}=PATH for index rows, or --params/--dataset "
                         "to run a configured detector instead")
    if record["model_sha256"]:
        if not model_file:
            raise SystemExit(f"the model runs the {name} teacher ({record['backend']}) on new images: pass "
                             f"--teacher-model {name}=FILE, the file its training caches came from (sha256 "
                             f"{record['model_sha256'][:16]}...)")
        found = file_sha256(model_file)
        if found != record["model_sha256"]:
            raise SystemExit(f"{model_file}: sha256 {found[:16]}... is not the {name} model the training caches came "
                             f"from ({record['model_sha256'][:16]}...): embeddings would not match the model's")
    return {"backend": record["backend"], "model": model_file, "params": dict(record["params"])}


def _test_caches(method: Method, rows: list[IndexRow], root: Path, index: Path, given: dict[str, str],
                 params: str | None, dataset: str | None, work: Path,
                 recorded: dict[str, dict[str, Any]] | None = None,
                 teacher_models: dict[str, str] | None = None) -> dict[str, str]:
    """The caches the method reads at test time: given paths, made now by the teacher(s) params.yaml configures
    (`params` + `dataset`), or made now by the teacher(s) the model recorded (`recorded`: model.pt / model.json
    `test_teachers`, e.g. DeSKPro's face detector, with the files in `teacher_models`)."""
    needed = sorted(set(method.test_caches) | ({method.image_field.split(".")[0]} if method.image_field else set()))
    caches = {k: given[k] for k in needed if k in given}
    missing = [k for k in needed if k not in caches]
    if not missing:
        return caches
    if (not params or not dataset) and not all(k in (recorded or {}) for k in missing):
        raise SystemExit(f"{method.name} reads the {', '.join(missing)} cache(s) at test time: pass --cache "
                         f"NAME=PATH for index rows, or --params params.yaml --dataset DS to run the teacher(s) "
                         f"params.yaml configures on these images")
    from reid.pipeline import params as C
    from reid.teachers.base import build_teacher

    cfg = C.load_params(params) if params and dataset else None
    for name in missing:
        kw = C.stage_teacher(cfg, dataset, name)[0] if cfg is not None else _recorded_teacher(
            name, (recorded or {})[name], (teacher_models or {}).get(name))
        for other in kw["params"].get("needs", []):
            if other not in caches:
                raise SystemExit(f"teacher {name} needs the {other} cache first: pass --cache {other}=PATH")
        out = work / f"{name}.h5"
        teacher = build_teacher(name, kw.get("backend", "onnx"), kw.get("model"), kw.get("device", "auto"),
                                caches, **kw["params"])
        teacher.build_cache(index, root, out, batch_size=int(kw.get("batch_size", 16)), workers=0)
        caches[name] = str(out)
    return caches


def batches(embedder: Any, rows: list[IndexRow], root: Path, caches: dict[str, str], index: Path,
            batch_size: int, workers: int, select: list[int] | None = None
            ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(row numbers, embeddings) per batch, preprocessed exactly as `evaluate` does; `select`: only these rows of
    `rows` (the caches stay aligned with all of them)."""
    from torch.utils.data import DataLoader

    from reid.data.dataset import ReIDDataset
    from reid.data.workers import worker_init
    from reid.engine.trainer import filter_positions, method_fields, open_caches

    method = embedder.method
    opened = open_caches(caches, index)
    wanted = list(range(len(rows))) if select is None else list(select)
    positions = filter_positions(method, wanted, opened)
    if len(positions) < len(wanted):
        log.warning("%d of %d images lack %s and are left out", len(wanted) - len(positions), len(wanted),
                    method.require_field)
    ds = ReIDDataset(rows, root, positions, embedder.input_size, train=False, caches=opened,
                     fields=method_fields(method, train=False), image_field=method.image_field)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, worker_init_fn=worker_init)
    for batch in loader:
        yield batch["index"].numpy(), embedder(batch)


def embed_images(model: str | Path, rows: list[IndexRow], root: str | Path, out: str | Path,
                 caches: dict[str, str] | None = None, params: str | None = None, dataset: str | None = None,
                 batch_size: int = 64, workers: int = 2, device: str = "auto", progress: bool = True,
                 with_identities: bool = False, cpu_amp: bool = DEFAULT_CPU_AMP,
                 teacher_models: dict[str, str] | None = None, select: list[int] | None = None) -> dict[str, Any]:
    """Embed `rows` (paths relative to `root`) into `out`; returns a summary (images/s, providers...).

    `select`: embed only these rows (e.g. one split), in this order, while the test-time caches stay aligned
    with all of `rows` (an index's cache, or one a teacher makes now over all of them)."""
    from tqdm import tqdm

    from reid.cache.h5 import CacheWriter, Field

    embedder = open_embedder(model, device, cpu_amp)
    method, root = embedder.method, Path(root).resolve()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reid-embed-") as tmp:
        index = write_index(rows, Path(tmp) / "index.csv")
        caches = _test_caches(method, rows, root, index, dict(caches or {}), params, dataset, Path(tmp),
                              embedder.test_teachers, teacher_models)
        stream = batches(embedder, rows, root, caches, index, batch_size, workers, select)
        chosen = list(range(len(rows))) if select is None else list(select)
        out_row = {full: k for k, full in enumerate(chosen)}  # index row -> row of the embeddings file
        first_rows, first = next(stream)
        fields = {k: Field(v.shape[1:], "float32", "vector") for k, v in first.items()}
        if with_identities:
            fields |= {"pid": Field((), "int64", "vector"), "camid": Field((), "int64", "vector")}
        listing = "\n".join(rows[i].path for i in chosen).encode()
        done, written = 0, np.zeros(len(chosen), bool)
        with CacheWriter(out, teacher=f"embed:{method.name}", backend=embedder.backend,
                         model_sha256=file_sha256(model), index_sha256=hashlib.sha256(listing).hexdigest(),
                         params={"method": method.name, "method_module": type(method).__module__,
                                 "method_params": method.params, "model": str(Path(model).resolve()),
                                 "root": str(root)},
                         paths=[rows[i].path for i in chosen], fields=fields) as writer, \
                tqdm(total=len(chosen), desc=f"embed {method.name}", unit="img", disable=not progress) as bar:
            for idx, feats in [(first_rows, first), *stream]:
                values = {k: v.astype(np.float32) for k, v in feats.items()}
                if with_identities:
                    values["pid"] = np.array([rows[i].pid for i in idx], np.int64)
                    values["camid"] = np.array([rows[i].camid for i in idx], np.int64)
                mine = np.array([out_row[int(i)] for i in idx], np.int64)
                writer.write_rows(mine, values)
                written[mine] = True
                done += len(idx)
                bar.update(len(idx))
            left_out = np.flatnonzero(~written).tolist()
            if left_out:  # rows the method cannot embed (require_field): stored as zeros, listed in the summary
                writer.write_rows(np.array(left_out), {k: np.zeros((len(left_out), *f.shape), f.dtype)
                                                       for k, f in fields.items()})
            final = writer.finalize()
    seconds = time.perf_counter() - start
    summary = {"out": str(final), "method": method.name, "backend": embedder.backend,
               "providers": embedder.providers, "images": done, "left_out": len(left_out),
               "seconds": round(seconds, 2), "images_per_s": round(done / max(seconds, 1e-9), 1)}
    log.info("embedded %d images in %.1f s (%.1f images/s) with %s %s -> %s", done, seconds,
             summary["images_per_s"], embedder.backend, embedder.providers, final)
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model.pt (PyTorch) or model.onnx (ONNX Runtime, model.json beside)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="a folder of crops (any layout, searched recursively)")
    src.add_argument("--index", help="an index CSV (paths relative to --root); pid/camid are stored too")
    p.add_argument("--root", help="dataset root of --index")
    p.add_argument("--split", choices=("train", "query", "gallery"),
                   help="only these index rows (--cache files stay aligned with the whole index)")
    p.add_argument("--cache", action="append", metavar="NAME=PATH", help="a test-time cache aligned with --index")
    p.add_argument("--params", help="params.yaml: run the teachers it configures for test-time caches")
    p.add_argument("--teacher-model", action="append", metavar="NAME=FILE",
                   help="the file of a teacher the model still runs at test time (DeSKPro: faces=det_10g.onnx), "
                        "checked against the sha256 the model recorded; repeatable")
    p.add_argument("--dataset", help="the params.yaml dataset whose teacher settings apply")
    p.add_argument("--out", required=True, help="output HDF5 file of embeddings")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--cpu-amp", action=argparse.BooleanOptionalAction, default=DEFAULT_CPU_AMP,
                   help="model.pt: embed in bfloat16 on a CPU with native bf16, as `evaluate` and the pipeline do")


def main(args: argparse.Namespace) -> int:
    from reid.cli import parse_caches
    from reid.engine.inference import pin_evaluate_threads

    pin_evaluate_threads()  # as `evaluate`: the same embeddings as the pipeline's
    if args.images:
        if args.cache:
            raise SystemExit("--cache rows must align with an --index; with --images use --params/--dataset")
        if args.split:
            raise SystemExit("--split selects rows of an --index; a folder (--images) has no splits")
        rows, root, ids = folder_rows(args.images), Path(args.images), False
    else:
        if not args.root:
            raise SystemExit("--index needs --root (the dataset root its paths are relative to)")
        rows, root, ids = read_index(args.index), Path(args.root), True
    select = None
    if args.split:  # the index stays whole so that --cache rows (aligned with it) still match
        select = [i for i, r in enumerate(rows) if r.split == args.split]
        if not select:
            raise SystemExit(f"{args.index}: no {args.split} rows")
    summary = embed_images(args.model, rows, root, args.out, parse_caches(args.cache), args.params, args.dataset,
                           args.batch_size, args.workers, args.device, with_identities=ids, cpu_amp=args.cpu_amp,
                           teacher_models=parse_caches(args.teacher_model), select=select)
    print(json.dumps(summary, sort_keys=True))
    return 0
