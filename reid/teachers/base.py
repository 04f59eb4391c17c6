"""Teacher base class, the TEACHERS registry and helpers shared by every auxiliary model.

A teacher turns one decoded image into one row of an HDF5 cache aligned with the dataset index. The work is
split in two so the runner can overlap decoding with inference:

- ``load(image_bgr, row, root, index)`` runs in decode workers (forked processes): cheap per-image work such as
  resizing, letterboxing or reading the synthetic ground truth. It must not touch the model.
- ``infer(items)`` runs batched in the main process and returns one array per field, first axis = batch.

``index`` is the row number in the index (0-based). Teachers that read another cache row-aligned with the
same index (``restored_faces`` reads the ``faces`` cache, named by a params key such as ``faces_cache``) use it.
The runner passes it as the keyword ``index=`` only when the subclass's ``load`` accepts a parameter of that
name, so a teacher written against the three-argument contract keeps working.
"""

from __future__ import annotations

import importlib
import inspect
import json
import typing
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from reid.cache.h5 import Field
from reid.data.index import IndexRow
from reid.device import resolve_device
from reid.hashing import file_sha256
from reid.registry import Registry


class MissingWeights(FileNotFoundError):
    """A weight file named in params.yaml is absent; the message says what it is and how to provide it."""


class Teacher:
    """An auxiliary model run once per dataset into an HDF5 cache (see docs/contracts.md, "Teachers").

    Subclasses set ``name`` (= registry key = cache file stem) and ``backends``, and implement ``fields``,
    ``load`` and ``infer``. ``needs_image = False`` lets the runner skip decoding (``image_bgr`` is then
    ``None``), e.g. for oracle backends that only read ground truth files. A teacher that needs the whole
    dataset at once (ISP's per-identity clustering) overrides ``build_cache`` instead of writing per batch.
    """

    name: ClassVar[str] = ""
    backends: ClassVar[tuple[str, ...]] = ()
    # Parameters read from `**params` with their defaults (params.yaml `teachers.<name>` is typed by them).
    defaults: ClassVar[dict[str, Any]] = {}
    # Backend -> where its weights file (`teachers.<name>.model`) comes from; a backend not listed reads no file
    # (oracle, cv2). The pre-flight check (reid/pipeline/preflight.py) names it for every missing file.
    weights_source: ClassVar[dict[str, str]] = {}
    # True where the file is an ImageNet backbone (isp_labels): `random` is then a choice, as for a method's weights
    weights_may_be_random: ClassVar[bool] = False
    needs_image: bool = True  # may be set per instance (e.g. False for an oracle backend)

    def __init__(self, backend: str, model_path: str | Path | None = None, device: str = "cpu", **params: Any):
        if self.backends and backend not in self.backends:
            raise ValueError(
                f"teacher '{self.name}' has no backend '{backend}'; choose one of {', '.join(self.backends)}"
            )
        self.backend = backend
        self.model_path = Path(model_path) if model_path else None
        self.device = resolve_device(device)
        self.params: dict[str, Any] = dict(params)

    # --- the contract -------------------------------------------------------------------------------------
    def fields(self) -> dict[str, Field]:
        """Per-row shape, dtype name and kind of each stored field, e.g.
        ``{"labels": Field((64, 32), "uint8", "labels")}``; the kind (reid/cache/h5.py FIELD_KINDS) says how the
        data pipeline augments it."""
        raise NotImplementedError

    def load(self, image_bgr: np.ndarray | None, row: IndexRow, root: Path, index: int | None = None) -> Any:
        """Per-image preprocessing in a decode worker; the result is handed to ``infer`` in a batch."""
        raise NotImplementedError

    def infer(self, items: list[Any]) -> dict[str, np.ndarray]:
        """Batched inference in the main process: one array per field with a leading batch axis."""
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        """What produced the cache, for logs and summaries (subclasses add e.g. ONNX providers)."""
        return {
            "teacher": self.name,
            "backend": self.backend,
            "model_sha256": self.model_sha256,
            "params": self.cache_params(),
            "device": self.device,
        }

    def build_cache(self, index_path: str | Path, root: str | Path, out: str | Path, batch_size: int = 16,
                    workers: int = 2, shard: tuple[int, int] | None = None, progress: bool = True,
                    flush_every_s: float = 10.0) -> dict[str, Any]:
        """Write the cache for every index row (or one shard's rows) and return the run summary. Default: the
        shared batched runner (decode workers -> ``load`` -> batched ``infer`` -> resumable CacheWriter)."""
        from reid.teachers.runner import run_teacher

        return run_teacher(self, index_path, root, out, batch_size=batch_size, workers=workers, shard=shard,
                           progress=progress, flush_every_s=flush_every_s)

    # --- helpers the runner uses --------------------------------------------------------------------------
    def setup(self) -> None:
        """Optional late initialisation, called by the runner in the main process after decode workers start."""

    def cache_params(self) -> dict[str, Any]:
        """Parameters recorded in the cache's ``params`` attribute (JSON-able); they decide resume/merge."""
        return json.loads(json.dumps(self.params, sort_keys=True, default=str))

    @cached_property
    def model_sha256(self) -> str:
        """sha256 of the model file ('' for backends without one, e.g. oracle)."""
        if self.model_path is None:
            return ""
        return file_sha256(self.model_path)

    @classmethod
    def load_accepts_index(cls) -> bool:
        """Whether ``load`` takes the row number (see module docstring)."""
        return "index" in inspect.signature(cls.load).parameters


TEACHERS: Registry[type[Teacher]] = Registry("teacher")


def get_teacher_class(name: str) -> type[Teacher]:
    """Look a teacher up, importing ``reid.teachers.<name>`` on demand so only the one needed is loaded."""
    if name not in TEACHERS and isinstance(name, str) and name.isidentifier():
        try:
            importlib.import_module(f"reid.teachers.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"reid.teachers.{name}":
                raise
    if name not in TEACHERS:
        known = ", ".join(TEACHERS.names()) or "(none imported)"
        raise KeyError(f"unknown teacher '{name}': no module reid/teachers/{name}.py registers it "
                       f"(registered: {known})")
    return TEACHERS.get(name)


# Keys every teacher section may hold besides the teacher's own parameters (read by params.stage_teacher / runner).
TEACHER_RUN_KEYS: dict[str, Any] = {"backend": str, "model": str | None, "batch_size": int, "workers": int,
                                    "device": str, "needs": list[str], "module": str, "shards": int}


def _type_of_default(value: Any) -> Any:
    if value is None:
        return Any
    if isinstance(value, bool):
        return bool
    if isinstance(value, float):
        return float
    if isinstance(value, int):
        return int
    if isinstance(value, str):
        return str
    if isinstance(value, (list, tuple)):
        return list | None
    return Any


def teacher_param_hints(name: str) -> dict[str, Any] | None:
    """Key -> type of everything a teacher section may hold: the runner's keys, the constructor's parameters and
    the class's `defaults` (None: no such teacher); what params.yaml and `teach --params-json` are checked against."""
    try:
        cls = get_teacher_class(name)
    except KeyError:
        return None
    hints = dict(TEACHER_RUN_KEYS)
    init = cls.__init__
    sig = inspect.signature(init)
    annotations = typing.get_type_hints(init)
    for p in sig.parameters.values():
        if p.name in ("self", "backend", "model_path", "device") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.name.endswith("_cache"):  # filled from `needs`, never set by hand
            continue
        hints[p.name] = annotations.get(p.name, Any)
    hints.update({k: _type_of_default(v) for k, v in cls.defaults.items()})
    return hints


def build_teacher(name: str, backend: str, model_path: str | Path | None, device: str = "auto",
                  caches: Mapping[str, str] | None = None, **params: Any) -> Teacher:
    """Instantiate a registered teacher from CLI / params.yaml values.

    ``needs: [other, ...]`` in the params names caches the teacher aligns on (restored_faces reads the faces
    cache); each must be among ``caches`` (name -> path) and reaches the teacher as the ``<other>_cache`` param.
    """
    from reid.settings import ParamsError, check_section

    cls = get_teacher_class(name)
    open_ended = not cls.defaults and any(p.kind is inspect.Parameter.VAR_KEYWORD
                                          for p in inspect.signature(cls.__init__).parameters.values())
    given_params = {k: v for k, v in params.items() if not k.endswith("_cache")}
    problems = [] if open_ended else check_section(f"teacher {name} parameters", given_params,
                                                   teacher_param_hints(name) or {}, f"teacher {name}")
    if problems:
        raise ParamsError("\n  ".join(problems))
    params = dict(params)
    given = dict(caches or {})
    for other in params.pop("needs", None) or []:
        if other not in given:
            raise ValueError(f"teacher {name} needs the {other} cache: pass --cache {other}=PATH")
        params[f"{other}_cache"] = given[other]
    return cls(backend=backend, model_path=model_path, device=device, **params)


def require_weights(path: str | Path | None, what: str, where_from: str, param_key: str) -> Path:
    """Return ``path`` if it is a file, else raise MissingWeights saying what it is, where to get it, which key.

    Nothing is ever downloaded: the user places the file and names it in params.yaml.
    """
    if path is not None and Path(path).is_file():
        return Path(path)
    shown = "(not set)" if path in (None, "") else str(path)
    raise MissingWeights(
        f"missing weights for {what}: {shown} is not a file.\n"
        f"  Where to get it: {where_from}\n"
        f"  Then place it locally and set `{param_key}` in params.yaml to its path "
        f"(the project never downloads weights)."
    )

