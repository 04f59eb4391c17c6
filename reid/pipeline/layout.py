"""The pipeline's file layout and the dependencies of every stage: one source for Snakemake and DVC.

The Snakefile's input functions and the dvc.yaml writer (reid/pipeline/dvc_yaml.py) both call these, so the two
DAGs cannot drift apart; tests/test_dag.py checks that Snakemake's planned jobs equal dvc.yaml's stages.

    data/<ds>/                          generated synthetic world (real datasets live where params.yaml says)
    cache/<ds>/index.csv                dataset index
    cache/<ds>/<teacher>.h5             teacher cache (parsing, faces, restored_faces, keypoints, isp_labels)
    cache/<ds>/<derived>.h5             outputs of a trained teacher model (face_teacher, vit_teacher;
                                        <derived>--pretrained.h5 for --pretrained runs: a pretrained teacher)
    models/<ds>/<run>/model.pt          trained student (+ train_log.csv, checkpoint.pt)
    models/pretrain/<arch>.pth          pretrain stage: a miniature ImageNet stand-in (+ <arch>.json)
    results/<ds>/<run>/metrics.json     evaluation
"""

from __future__ import annotations

import shlex
from typing import Any, Mapping

from reid.models.zoo import is_random
from reid.pipeline import params as C


LEDGER_ROOT = "ledger"  # the committed evidence ledger (reid/ledger.py)


def ledger_dir(ds: str) -> str:
    return f"{LEDGER_ROOT}/{ds}"


def data_dir(ds: str) -> str:
    return f"data/{ds}"


def index_path(ds: str) -> str:
    return f"cache/{ds}/index.csv"


def cache_path(ds: str, name: str) -> str:
    return f"cache/{ds}/{name}.h5"


def cache_stem(path: str) -> str:
    """The inverse of `cache_path`: the cache's file stem (`face_teacher`, `face_teacher--pretrained`)."""
    return path.rsplit("/", 1)[-1].removesuffix(".h5")


def model_dir(ds: str, run: str) -> str:
    return f"models/{ds}/{run}"


def model_path(ds: str, run: str) -> str:
    return f"models/{ds}/{run}/model.pt"


def train_log_path(ds: str, run: str) -> str:
    return f"models/{ds}/{run}/train_log.csv"


def pretrain_path(arch: str) -> str:
    return f"models/pretrain/{arch}.pth"


def pretrain_arch(path: str) -> str | None:
    """The arch whose pretrain stage writes `path` (None for any other file, e.g. a real ImageNet file)."""
    from reid.engine.pretrain import ARCHS

    arch = path.removeprefix("models/pretrain/").removesuffix(".pth")
    return arch if arch in ARCHS and pretrain_path(arch) == path else None


def metrics_path(ds: str, run: str) -> str:
    return f"results/{ds}/{run}/metrics.json"


def probe_path(ds: str, run: str) -> str:
    """`python -m reid probe`'s statistics of a run's model (what its mechanism does against ground truth)."""
    return f"results/{ds}/{run}/probe.json"


def onnx_dir(ds: str, run: str) -> str:
    """`python -m reid export`'s folder for a run: model.onnx + model.json."""
    return f"models/{ds}/{run}/onnx"


def evaluation_outputs(ds: str, run: str) -> dict[str, str]:
    """Everything an evaluation writes: metrics.json, the CMC curve (cmc.csv, a DVC plot; cmc.png) and ranks.png."""
    folder = f"results/{ds}/{run}"
    return {"metrics": f"{folder}/metrics.json", "cmc": f"{folder}/cmc.csv", "cmc_png": f"{folder}/cmc.png",
            "ranks": f"{folder}/ranks.png", "per_query": f"{folder}/per_query.csv"}


def cmc_y(cfg: Mapping[str, Any], ds: str) -> str:
    """The CMC column a DVC plot shows: the protocol's last setting (PRCC: cross_clothes), as ranks.png does."""
    from reid.data.datasets import dataset_info
    from reid.eval.protocols import PROTOCOLS

    loader = C.dataset_cfg(cfg, ds).get("loader", ds)
    return PROTOCOLS.get(dataset_info(loader).protocol).settings[-1].name


def is_generated(cfg: Mapping[str, Any], ds: str) -> bool:
    return bool(C.dataset_cfg(cfg, ds).get("generate"))


def _cache_inputs(cfg: Mapping[str, Any], ds: str, names: list[str], pretrained: bool = False) -> dict[str, str]:
    """Cache name -> file; a `--pretrained` run reads the derived caches of the pretrained teacher runs."""
    out = {}
    teachers, derived = C.teacher_names(cfg), C.derived_caches()
    for name in names:
        if name not in teachers and name not in derived:
            raise C.ConfigError(f"unknown cache {name!r}: not a teacher configured under `teachers:` "
                                f"{tuple(teachers)} nor a derived cache {tuple(derived)}")
        out[name] = cache_path(ds, C.derived_cache_name(name, pretrained) if name in derived else name)
    return out


def _pretrained(run: str) -> bool:
    return C.parse_run(run).pretrained


def _teacher_pretrained(method: Any, run: str) -> bool:
    """Whether the run reads the pretrained teacher's derived caches: its own init unless its method says
    (`Method.teacher_pretrained`, e.g. SUREID's `teacher_init: pretrained`)."""
    chosen = method.teacher_pretrained
    return _pretrained(run) if chosen is None else bool(chosen)


def index_deps(cfg: Mapping[str, Any], ds: str) -> dict[str, str]:
    return {"root": data_dir(ds)} if is_generated(cfg, ds) else {}


def teacher_deps(cfg: Mapping[str, Any], ds: str, teacher: str) -> dict[str, str]:
    """index + caches the teacher aligns on + the weights file (so new weights rerun the cache)."""
    kw, _ = C.stage_teacher(cfg, ds, teacher)
    deps = {"index": index_path(ds), **index_deps(cfg, ds)}
    deps.update(_cache_inputs(cfg, ds, list(kw["params"].get("needs", []))))
    if kw.get("backend", "onnx") != "oracle" and kw.get("model") and not is_random(kw["model"]):
        deps["weights"] = str(kw["model"])
    return deps


def teacher_shards(cfg: Mapping[str, Any], ds: str, teacher: str) -> int:
    """How many shard jobs make cache/<ds>/<teacher>.h5 (`teachers.<t>.shards`, per dataset overridable)."""
    n = int(C.stage_teacher(cfg, ds, teacher)[0].get("shards", 1))
    if n < 1:
        raise C.ConfigError(f"teachers.{teacher}.shards must be >= 1, got {n}")
    return n


def shard_path(ds: str, teacher: str, i: int, n: int) -> str:
    return f"cache/{ds}/{teacher}.shards/{i}-of-{n}.h5"


def shard_paths(cfg: Mapping[str, Any], ds: str, teacher: str) -> list[str]:
    """The shard parts of a sharded teacher cache ([] when it runs as one job)."""
    n = teacher_shards(cfg, ds, teacher)
    return [shard_path(ds, teacher, i, n) for i in range(n)] if n > 1 else []


def is_weights_key(key: str) -> bool:
    """Method parameters naming a backbone weights file (`weights`, `vit_base_weights`, ...)."""
    return key == "weights" or key.endswith("_weights")


def train_deps(cfg: Mapping[str, Any], ds: str, run: str) -> dict[str, str]:
    """index + caches + every backbone weights file the run loads (a pretrain stage's output, or a user's
    ImageNet file: new weights retrain)."""
    deps = {"index": index_path(ds), **index_deps(cfg, ds)}
    resolved = C.stage_train(cfg, ds, run)[0]
    method = C.resolved_method(resolved)
    deps.update(_cache_inputs(cfg, ds, C.cache_names(method, train=True), _teacher_pretrained(method, run)))
    params = resolved["method_params"]
    deps.update({k: str(v) for k, v in sorted(params.items()) if is_weights_key(k) and v and not is_random(v)})
    return deps


def pretrain_deps(cfg: Mapping[str, Any]) -> dict[str, str]:
    """The pretraining world's index and folder."""
    ds = C.pretrain_dataset(cfg)
    return {"index": index_path(ds), **index_deps(cfg, ds)}


def derived_deps(cfg: Mapping[str, Any], ds: str, stem: str) -> dict[str, str]:
    """The teacher run's model (the pretrained one for `<name>--pretrained`), the index and its test caches."""
    run = C.derived_cache_run(stem)
    deps = {"model": model_path(ds, run), "index": index_path(ds), **index_deps(cfg, ds)}
    deps.update(_cache_inputs(cfg, ds, C.method_caches(cfg, ds, run, train=False), _pretrained(run)))
    return deps


def evaluate_deps(cfg: Mapping[str, Any], ds: str, run: str) -> dict[str, str]:
    # an evaluation-only row (EVAL_ABLATIONS) reads the model of the row it reuses
    model = model_path(C.model_dataset(cfg, ds), C.model_run(run))
    deps = {"model": model, "index": index_path(ds), **index_deps(cfg, ds)}
    deps.update(_cache_inputs(cfg, ds, C.method_caches(cfg, ds, run, train=False), _pretrained(run)))
    return deps


def probe_deps(cfg: Mapping[str, Any], ds: str, run: str) -> dict[str, str]:
    """The run's model, the index and the caches its method's probe reads (`Method.probe_caches`)."""
    method = C.run_method(cfg, C.model_dataset(cfg, ds), C.model_run(run))
    deps = {"model": model_path(C.model_dataset(cfg, ds), C.model_run(run)), "index": index_path(ds),
            **index_deps(cfg, ds)}
    deps.update(_cache_inputs(cfg, ds, sorted(method.probe_caches), _pretrained(run)))
    return deps


# Dependency names that are not caches; every other name in a stage's deps is a cache (teacher or derived).
NON_CACHE_DEPS = frozenset({"index", "root", "model", "weights"})


def cache_args(deps: Mapping[str, str]) -> str:
    """`--cache name=path` for every cache among a stage's deps."""
    return " ".join(f"--cache {shlex.quote(f'{k}={v}')}" for k, v in sorted(deps.items())
                    if k not in NON_CACHE_DEPS and not is_weights_key(k))
