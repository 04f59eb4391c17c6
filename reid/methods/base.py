"""The Method base class: what a paper contributes (model, losses, caches, embedding); the rest is shared.

A method module subclasses `Method`, registers it in `METHODS`, and never writes its own training loop: the
shared trainer (reid/engine/trainer.py) calls, per step, `training_losses(model, batch, epoch)` and sums the
returned weighted terms; at test time it calls `embed(model, batch)` then `distance(q, g)`.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from reid.data.transforms import FieldAugment
from reid.registry import Registry

METHODS: Registry[type["Method"]] = Registry("method")


Row = dict[str, Any]


@dataclass(frozen=True)
class Claim:
    """A paper's claim, decided by reid/eval/claims.py: row `better` beats row `worse` (ablation rows of one
    method) on protocol setting `setting`, by `metric` ("ap": per-query AP, i.e. mAP; "r1": rank-1 hits)."""

    name: str
    better: str
    worse: str
    setting: str
    metric: str = "ap"
    control: str | None = None  # oracle row that must beat `control_worse` for the world to be able to show it
    control_worse: str | None = None  # the control's baseline row; None: `worse` (the same baseline)
    # the initialisations the claim is decided under ("scratch", "pretrained"); None: params.yaml ablation.init.
    # A claim whose reading depends on an init names it (e.g. a control that exists only from scratch).
    inits: tuple[str, ...] | None = None

    @property
    def rows(self) -> tuple[str, ...]:
        """Every row the claim compares: better, worse, then the control's pair when declared."""
        extra = (self.control, self.control_worse or self.worse) if self.control else ()
        return tuple(dict.fromkeys((self.better, self.worse, *extra)))


class Method:
    """Base class; subclasses set `name`, `caches` (training) and `test_caches` (inference) and override hooks.

    `caches` maps a teacher name to the fields read from `cache/<dataset>/<teacher>.h5`; the dataset puts
    them in the batch as "<teacher>.<field>", augmented jointly with the image (see docs/contracts.md). Every
    attribute and hook below has a working default, so a method overrides only what its paper changes.
    """

    name: ClassVar[str] = ""
    # --- what the method reads (may be set per instance in __init__, from its params) --------------------------
    caches: dict[str, list[str]] = {}
    test_caches: dict[str, list[str]] = {}
    probe_caches: dict[str, list[str]] = {}  # what `python -m reid probe` adds to the batch
    probe_groundtruth: tuple[str, ...] = ()  # synthetic ground-truth masks the probe adds where the world has them
    image_field: str | None = None  # take the input image from this cached `image` field, not the image file
    require_field: str | None = None  # only rows where this cached flag is nonzero (e.g. faces.has_face)
    rgb_field_augment: FieldAugment | None = None  # training also translates and erases cached `image` fields

    # --- tables read through the METHODS registry (reid.pipeline.params, reid.report) -------------------------
    ablations: ClassVar[dict[str, Row]] = {}  # the paper's table rows: row -> parameter overrides
    extra_ablations: ClassVar[dict[str, Row]] = {}  # further rows reachable by run name, not in the tables
    eval_ablations: ClassVar[dict[str, tuple[str, Row]]] = {}  # row -> (trained row reused, test-time overrides)
    # row -> the row whose very network it trains under `--pretrained` (same seed, data, caches and parameters
    # that act), so the pipeline trains it once (reid.pipeline.params.model_run)
    same_model_pretrained: ClassVar[dict[str, str]] = {}
    paper_tables: ClassVar[dict[str, dict[str, dict[str, float]]]] = {}  # table -> row -> metric -> value
    claims: ClassVar[tuple["Claim", ...]] = ()  # what the paper says one row does better than another
    knobs: ClassVar[dict[str, str]] = {}  # top-level params.yaml key -> parameter (`dvc exp run -S alpha=0.8`)
    provides_cache: ClassVar[str | None] = None  # a teacher method: the derived cache its outputs make
    # Which init's trained teacher the derived caches (face_teacher, vit_teacher) come from: None = the run's own
    # (a `--pretrained` run reads `<cache>--pretrained.h5`); True = always the pretrained teacher (a control that
    # distils a scratch student from a stronger teacher). Set per instance from the method's params.
    teacher_pretrained: bool | None = None
    # Overrides that make the network tiny (CPU tests at 64 x 32 input, tests/test_registries.py); never used by
    # the pipeline.
    tiny_params: ClassVar[Row] = {}
    # Parameters added after records (model.pt, model.json) were first saved -> the value a record that lacks them
    # was made with, so an old model is rebuilt as it was trained, not with the new default.
    record_defaults: ClassVar[Row] = {}

    def __init__(self, **params: Any) -> None:
        self.params = params

    # --- model -----------------------------------------------------------------------------------------
    def build_model(self, num_classes: int) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__}.build_model")

    # --- training --------------------------------------------------------------------------------------
    def training_losses(self, model: nn.Module, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        """Weighted loss terms by name; the trainer logs each and backpropagates their sum."""
        raise NotImplementedError(f"{type(self).__name__}.training_losses")

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Hook before each epoch (ISP re-clusters here). Default: nothing."""

    def extra_state(self) -> dict[str, Any]:
        """Method state saved with checkpoints (e.g. ISP's current pseudo-labels). Default: none."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned."""

    # --- inference -------------------------------------------------------------------------------------
    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Test-time features; default: the model output and its mirror summed (flip TTA), under key 'feat'."""
        images = batch["image"]
        feat = model(images) + model(torch.flip(images, dims=[3]))
        return {"feat": feat}

    def distance(self, q: dict[str, torch.Tensor], g: dict[str, torch.Tensor]) -> torch.Tensor:
        """Default: cosine distance 1 - cos on 'feat'."""
        return cosine_distance(q["feat"], g["feat"])

    # --- a teacher method's outputs for its student (when `provides_cache` is set) ---------------------------
    def cache_fields(self, num_classes: int) -> dict[str, Any]:
        """Per-row Field (shape, dtype, kind) of each output `cache_outputs` returns."""
        raise NotImplementedError(f"method {self.name!r} provides no cache: it is not a teacher for a student")

    def cache_outputs(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The outputs cached for the student, one tensor per `cache_fields` entry with a leading batch axis."""
        raise NotImplementedError(f"method {self.name!r} provides no cache: it is not a teacher for a student")

    # --- deployment (reid/deploy/export.py) -------------------------------------------------------------
    def export_inputs(self, input_size: tuple[int, int]) -> dict[str, tuple[tuple[int, ...], str]]:
        """The exported graph's inputs: batch key -> (per-sample shape, dtype), normalised like the batch.
        Default: the image alone. A method whose embedding reads test caches adds their fields."""
        return {"image": ((3, int(input_size[0]), int(input_size[1])), "float32")}

    def export_embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the exported graph computes: `embed`, which must then be traceable (static shapes, no
        data-dependent Python branching). Override with an equivalent traceable form when it is not."""
        return self.embed(model, batch)

    # --- diagnostics -----------------------------------------------------------------------------------
    def backbone_weights(self) -> dict[str, str]:
        """The ImageNet files this configuration loads: parameter name -> backbone arch (reid.models.zoo). The
        pre-flight check refuses a real-dataset run whose parameter is null: a file, or `random` by choice.
        Default: every `weights` / `*_weights` parameter, arch unknown."""
        return {k: "" for k in self.params if k == "weights" or k.endswith("_weights")}

    def probe(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-image statistics of the method's mechanism (B,) by name, read by `python -m reid probe`; the
        batch carries the `probe_caches` fields and, on a synthetic world, `groundtruth.<key>` for each key of
        `probe_groundtruth` (masks at the input size). Default: none."""
        return {}


def parsing_person(batch: dict[str, torch.Tensor], who: str) -> torch.Tensor:
    """(B, H, W) 1 on the person's visible pixels (any non-background label of the parsing cache), at the
    parsing's own size, on the image's device: what the positive controls read in place of a learned mask."""
    if "parsing.labels" not in batch:
        raise KeyError(f"{who}: batch has no 'parsing.labels' (cache parsing.h5, labels)")
    return (batch["parsing.labels"] > 0).float().to(batch["image"].device)


def cosine_distance(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity between every query row and gallery row."""
    return 1.0 - F.normalize(q.float(), dim=1) @ F.normalize(g.float(), dim=1).t()


def get_method_class(name: str) -> type[Method]:
    """A registered method class (a built-in one is imported on this first lookup, see reid/methods/__init__.py)."""
    return METHODS.get(name)


def build_method(name: str, **params: Any) -> Method:
    """Instantiate a registered method by name."""
    return get_method_class(name)(**params)


def method_param_hints(name: str) -> dict[str, Any] | None:
    """Parameter name -> type annotation of a registered method's constructor (None: no such method); what
    params.yaml's `methods.<m>` and a verb's `--method-params` are checked against."""
    if name not in METHODS:
        return None
    init = METHODS.get(name).__init__
    sig = inspect.signature(init)
    hints = typing.get_type_hints(init)
    out = {p: hints.get(p, Any) for p in sig.parameters if p not in ("self", "args", "kwargs")}
    return {**out, "module": str}  # where a method outside the package lives (reid.pipeline.params.PLUGIN_KEY)


def method_from_record(name: Any, params: Any, recorded_module: Any = None, where: str = "") -> Method:
    """Rebuild the method a saved record names (model.pt, model.json, an embeddings file).

    A file never chooses code: only methods already registered (the built-in ones, and plugins imported from the
    user's own params.yaml or `reid --plugin MODULE`) can be named. The module a record notes is shown in the
    error, never imported (importing it would run whatever a `<module>.py` beside the file holds)."""

    if not isinstance(name, str) or not isinstance(params, Mapping):
        raise ValueError(f"{where or 'record'}: malformed method record (method={name!r}, method_params of type "
                         f"{type(params).__name__})")
    if name not in METHODS:
        hint = (f"; it was made by the plugin module {recorded_module!r}: if you trust it, name it in your "
                f"params.yaml (methods.{name}.module) and pass --params, or pass `reid --plugin {recorded_module}`"
                if isinstance(recorded_module, str) and recorded_module and not recorded_module.startswith("reid.")
                else "")
        raise ValueError(f"{where or 'record'}: names method {name!r}, which is not registered (known: "
                         f"{', '.join(METHODS.names())}){hint}")
    try:
        return build_method(name, **{**get_method_class(name).record_defaults, **params})
    except TypeError as exc:
        raise ValueError(f"{where or 'record'}: its parameters do not fit method {name!r} ({exc})") from None
