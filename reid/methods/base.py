"""The Method base class: what a paper contributes (model, losses, caches, embedding); the rest is shared.

A method module subclasses `Method`, registers it in `METHODS`, and never writes its own training loop: the
shared trainer (reid/engine/trainer.py) calls, per step, `training_losses(model, batch, epoch)` and sums the
returned weighted terms; at test time it calls `embed(model, batch)` then `distance(q, g)`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from reid.registry import Registry

METHODS: Registry[type["Method"]] = Registry("method")


class Method:
    """Base class; subclasses set `name`, `caches` (training) and `test_caches` (inference) and override hooks.

    `caches` maps a teacher name to the fields read from `cache/<dataset>/<teacher>.h5`; the dataset puts
    them in the batch as "<teacher>.<field>", augmented jointly with the image (see docs/contracts.md).
    """

    name: ClassVar[str] = ""
    caches: ClassVar[dict[str, list[str]]] = {}
    test_caches: ClassVar[dict[str, list[str]]] = {}
    probe_caches: ClassVar[dict[str, list[str]]] = {}
    # Training also translates and erases cached RGB fields (e.g. face crops), jointly for all of a sample's.
    rgb_field_augment: bool = False

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

    # --- diagnostics -----------------------------------------------------------------------------------
    def probe(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-image statistics of the method's mechanism (B,) by name, read by `python -m reid probe`; the
        batch carries the `probe_caches` fields. Default: none."""
        return {}


def cosine_distance(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity between every query row and gallery row."""
    return 1.0 - F.normalize(q.float(), dim=1) @ F.normalize(g.float(), dim=1).t()


def build_method(name: str, **params: Any) -> Method:
    """Instantiate a registered method by name (importing reid.methods registers the built-in ones)."""
    import reid.methods  # noqa: F401  (registration side effect)

    return METHODS.get(name)(**params)
