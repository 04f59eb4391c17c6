"""`python -m reid export`: a trained model.pt -> `model.onnx` (the deployed embedding only) + `model.json`.

The graph is the method's `export_embed` (= its test-time `embed`, flip TTA included) with a dynamic batch axis:
no teacher, no classifier, no cache that the student does not read at test time. `model.json` says how to feed it
(input names, shapes, preprocessing) and how to compare two outputs (the method and its parameters, whose
`distance` `python -m reid search` applies). Exported with torch's TorchScript-based ONNX exporter (the
torch.export one needs onnxscript, which this project does not install).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reid.data.transforms import resize_images
from reid.hashing import file_sha256
from reid.serialization import read_json_file, write_json_file
from reid.methods.base import Method
from reid.vocab import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

FORMAT = "reid-onnx/1"
OPSET = 17


class EmbeddingGraph(nn.Module):
    """Inputs in `names` order -> the method's test-time embedding, outputs in sorted key order."""

    def __init__(self, method: Method, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.method, self.model, self.names = method, model, names
        self.outputs: list[str] = []

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.method.export_embed(self.model, dict(zip(self.names, inputs)))
        self.outputs = sorted(feats)
        return tuple(feats[k].float() for k in self.outputs)


def onnx_name(key: str) -> str:
    """A batch key as an ONNX tensor name ('faces.crop' -> 'faces_crop')."""
    return key.replace(".", "_")


def graph_inputs(method: Method, batch: dict[str, Any], input_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The exported graph's feed for a dataset batch: each input key, fitted to its declared size (image fields
    resized as the method's own `embed` resizes them), as a numpy array named like the ONNX input."""
    feed = {}
    for key, (shape, dtype) in method.export_inputs(input_size).items():
        x = batch[key]
        if len(shape) == 3:
            x = resize_images(x.float(), shape[1:])
        feed[onnx_name(key)] = x.reshape(len(x), *shape).cpu().numpy().astype(dtype)
    return feed


def describe(method: Method, ckpt: dict[str, Any], model_path: Path, outputs: dict[str, list],
             opset: int = OPSET) -> dict[str, Any]:
    """model.json: everything a user needs to feed the graph and compare its outputs."""
    h, w = ckpt["input_size"]
    inputs = []
    for key, (shape, dtype) in method.export_inputs((h, w)).items():
        entry: dict[str, Any] = {"name": onnx_name(key), "batch_key": key, "shape": [None, *shape], "dtype": dtype}
        if len(shape) == 3:
            entry["preprocess"] = {"resize_hw": list(shape[1:]), "colour_order": "RGB", "scale": 1 / 255,
                                   "mean": IMAGENET_MEAN.tolist(), "std": IMAGENET_STD.tolist(),
                                   "layout": "NCHW", "source": "the image file" if key == "image" else
                                   f"the `{key.split('.')[1]}` field of the {key.split('.')[0]} cache"}
        else:
            entry["source"] = f"the `{key.split('.')[1]}` field of the {key.split('.')[0]} cache (0/1)"
        inputs.append(entry)
    return {
        "format": FORMAT,
        "method": method.name,
        "method_module": type(method).__module__,
        "method_params": method.params,
        "method_state": _plain(method.extra_state()),
        "input_size": [h, w],
        "inputs": inputs,
        "outputs": [{"name": k, "shape": v} for k, v in outputs.items()],
        "distance": {"method": method.name, "function": f"{type(method).__name__}.distance",
                     "doc": ((type(method).distance.__doc__ or "").strip().splitlines() or [""])[0]},
        "opset": opset,
        "test_teachers": ckpt.get("test_teachers", {}),  # what still runs at test time (DeSKPro: the face detector)
        "source_model": str(model_path),
        "source_model_sha256": file_sha256(model_path),
    }


def export_graph(method: Method, model: nn.Module, input_size: tuple[int, int], out: str | Path,
                 opset: int = OPSET) -> tuple[Path, dict[str, list]]:
    """Write the method's embedding graph (dynamic batch) to `out`; returns the path and the outputs' shapes."""
    spec = method.export_inputs(input_size)
    names = list(spec)
    example = tuple(torch.zeros((2, *shape), dtype=getattr(torch, dtype)) for shape, dtype in spec.values())
    graph = EmbeddingGraph(method, model, names).eval()
    with torch.no_grad():
        outs = graph(*example)
    out_names = list(graph.outputs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    dynamic = {onnx_name(k): {0: "batch"} for k in names} | {k: {0: "batch"} for k in out_names}
    with torch.no_grad():
        torch.onnx.export(graph, example, str(tmp), input_names=[onnx_name(k) for k in names],
                          output_names=out_names, dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    tmp.replace(out)
    return out, {k: [None, *o.shape[1:]] for k, o in zip(out_names, outs)}


def export_model(model_path: str | Path, out_dir: str | Path, opset: int = OPSET) -> tuple[Path, Path]:
    """Write `out_dir/model.onnx` and `out_dir/model.json` for a trained model.pt; returns both paths."""
    from reid.engine.inference import load_model

    model_path, out_dir = Path(model_path), Path(out_dir)
    method, model, ckpt = load_model(model_path, "cpu")
    onnx_path, outputs = export_graph(method, model, tuple(ckpt["input_size"]), out_dir / "model.onnx", opset)
    info = describe(method, ckpt, model_path, outputs, opset) | {"onnx_sha256": file_sha256(onnx_path)}
    json_path = write_json_file(info, out_dir / "model.json")  # checksummed: embed refuses a damaged pair
    log.info("exported %s (%s) -> %s: inputs %s, outputs %s", model_path, method.name, onnx_path,
             [i["name"] for i in info["inputs"]], list(outputs))
    return onnx_path, json_path


def _plain(state: dict[str, Any]) -> dict[str, Any]:
    """Method state as JSON (test-time state only matters for the distance; tensors are dropped)."""
    return {k: v for k, v in state.items() if isinstance(v, (int, float, str, bool, type(None)))}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="models/<ds>/<run>/model.pt")
    p.add_argument("--out", required=True, help="output folder (model.onnx, model.json)")
    p.add_argument("--opset", type=int, default=OPSET)


def main(args: argparse.Namespace) -> int:
    onnx_path, json_path = export_model(args.model, args.out, args.opset)
    info = read_json_file(json_path, "model.json")
    print(f"wrote {onnx_path} and {json_path}: {info['method']}, inputs "
          + ", ".join(f"{i['name']}{i['shape']}" for i in info["inputs"]) + "; outputs "
          + ", ".join(f"{o['name']}{o['shape']}" for o in info["outputs"]))
    return 0
