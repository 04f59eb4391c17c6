"""Where each official ImageNet backbone file comes from: one table for the pre-flight check, the pretrain stage's
stand-ins and the docs. Nothing here downloads; a user places the file and names it in params.yaml.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Backbone", "BACKBONES", "RANDOM", "backbone", "is_random"]

# The explicit choice of random initialisation for a backbone weights key (`weights: random`): no file, no warning.
# A null key means "not chosen yet", which the pre-flight refuses on a real dataset.
RANDOM = "random"


class Backbone(NamedTuple):
    """An ImageNet backbone file: its official name, the library that publishes it, and where to get it."""

    file: str
    library: str
    source: str
    format: str = "a PyTorch state dict (.pth) or .safetensors, loaded weights-only"


_TORCHVISION = "https://download.pytorch.org/models/"
_TORCHREID = ("the torchreid model zoo (KaiyangZhou/deep-person-reid, docs MODEL_ZOO 'ImageNet pretrained models', "
              "Google Drive links)")
_HRNET = "HRNet/HRNet-Image-Classification README ('ImageNet pretrained models', OneDrive / Baidu links)"

BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone("resnet18-f37072fd.pth", "torchvision", _TORCHVISION + "resnet18-f37072fd.pth"),
    "resnet50": Backbone("resnet50-0676ba61.pth", "torchvision", _TORCHVISION + "resnet50-0676ba61.pth"),
    "osnet_x0_25": Backbone("osnet_x0_25_imagenet.pth", "torchreid", _TORCHREID),
    "osnet_x0_5": Backbone("osnet_x0_5_imagenet.pth", "torchreid", _TORCHREID),
    "osnet_x0_75": Backbone("osnet_x0_75_imagenet.pth", "torchreid", _TORCHREID),
    "osnet_x1_0": Backbone("osnet_x1_0_imagenet.pth", "torchreid", _TORCHREID),
    "hrnet_w18_small": Backbone("hrnet_w18_small_model_v2.pth", "HRNet-Image-Classification", _HRNET),
    "hrnet_w32": Backbone("hrnetv2_w32_imagenet_pretrained.pth", "HRNet-Image-Classification", _HRNET),
    "deit_small": Backbone("deit_small_patch16_224 (model.safetensors)", "timm",
                           "Hugging Face hub timm/deit_small_patch16_224.fb_in1k"),
    "vit_base": Backbone("vit_base_patch16_224 (model.safetensors)", "timm",
                         "Hugging Face hub timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"),
}


def backbone(arch: str) -> Backbone:
    """The official file of `arch`; an arch without an ImageNet file (e.g. a test's tiny net) gets a generic entry."""
    return BACKBONES.get(arch, Backbone(f"ImageNet weights of {arch}", "its publisher", "its publisher's model zoo"))


def is_random(value: object) -> bool:
    """Whether a weights key holds the explicit choice of random initialisation."""
    return isinstance(value, str) and value == RANDOM
