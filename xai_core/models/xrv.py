"""torchxrayvision classifiers behind our `ModelCard` contract (logits out, no op_norm, no in-place ReLU)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torchvision
import torchxrayvision as xrv
from torch import nn
from torchxrayvision.baseline_models.chestx_det.ptsemseg.pspnet import pspnet

from xai_core.errors import MissingWeightsError
from xai_core.models.base import ModelHandle, find_weights, weights_dirs
from xai_core.models.cards import InputSpec, ModelCard
from xai_core.models.densenet import DenseNetLogits
from xai_core.models.registry import register_model

INTENDED_USE = (
    "Research and education. torchxrayvision classifier (Cohen et al.); not a medical device. "
    "Probabilities are uncalibrated sigmoid outputs; operating points from torchxrayvision."
)

# registry name -> torchxrayvision weights key
XRV_CLASSIFIERS = {
    "xrv-densenet121-all": "densenet121-res224-all",
    "xrv-densenet121-nih": "densenet121-res224-nih",
    "xrv-densenet121-pc": "densenet121-res224-pc",
    "xrv-densenet121-chex": "densenet121-res224-chex",
    "xrv-densenet121-rsna": "densenet121-res224-rsna",
    "xrv-densenet121-mimic_nb": "densenet121-res224-mimic_nb",
    "xrv-densenet121-mimic_ch": "densenet121-res224-mimic_ch",
    "xrv-resnet50-all": "resnet50-res512-all",
}


class ResNetLogits(nn.Module):
    """A torchvision ResNet returning the selected logits."""
    def __init__(self, net: nn.Module, outputs: list[int]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("outputs", torch.tensor(outputs, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).index_select(1, self.outputs)


def _xrv_card(name: str, key: str) -> ModelCard:
    info = xrv.models.model_urls[key]
    trained = [(i, label) for i, label in enumerate(info["labels"]) if label]
    thresholds = {}
    for i, label in trained:
        value = float(info["op_threshs"][i]) if "op_threshs" in info else math.nan
        thresholds[label] = 0.5 if math.isnan(value) else value
    is_resnet = key.startswith("resnet")
    return ModelCard(
        name=name,
        labels=[label for _, label in trained],
        input=InputSpec(channels=1, size=int(info.get("input_resolution", 224)), value_range=(-1024.0, 1024.0)),
        cam_layer="net.layer4" if is_resnet else "features.norm5",
        feature_layer="net.layer4" if is_resnet else "features.norm5",
        thresholds=thresholds,
        provenance={
            "source": "torchxrayvision",
            "weights_key": key,
            "weights_url": info["weights_url"],
            "output_indices": [i for i, _ in trained],
            "description": info.get("description", ""),
        },
        intended_use=INTENDED_USE,
        weights_file=os.path.basename(info["weights_url"]),
    )


def _weights_path(card: ModelCard) -> Path | None:
    path = find_weights(card.weights_file)
    if path is None and os.environ.get("XAI_DOWNLOAD_WEIGHTS") == "1" and card.family == "segmenter":
        path = weights_dirs()[0] / card.weights_file
        path.parent.mkdir(parents=True, exist_ok=True)
        xrv.utils.download(card.provenance["weights_url"], str(path))
        return path
    if path is None and os.environ.get("XAI_DOWNLOAD_WEIGHTS") == "1":
        path = Path(xrv.models.get_weights(card.provenance["weights_key"], str(weights_dirs()[0])))
    return path


def _missing(card: ModelCard) -> MissingWeightsError:
    places = " or ".join(str(d) for d in weights_dirs())
    return MissingWeightsError(
        f"Weights for '{card.name}' are not on this machine: put '{card.weights_file}' (from "
        f"{card.provenance['weights_url']}) in {places}, set XAI_WEIGHTS_DIR to the folder holding it, or set "
        "XAI_DOWNLOAD_WEIGHTS=1 to download it where the network allows."
    )


def _load_xrv(card: ModelCard, device: torch.device, allow_random_weights: bool) -> ModelHandle:
    outputs = card.provenance["output_indices"]
    path = _weights_path(card)
    if path is None and not allow_random_weights:
        raise _missing(card)
    if card.provenance["weights_key"].startswith("resnet"):
        net = torchvision.models.resnet50(num_classes=18, weights=None)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if path is not None:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))
        module: nn.Module = ResNetLogits(net, outputs)
    else:
        net = xrv.models.DenseNet(weights=None, num_classes=18)
        if path is not None:
            saved = torch.load(path, map_location="cpu", weights_only=False)
            state = saved.state_dict() if isinstance(saved, nn.Module) else saved
            state = {k: v for k, v in state.items() if k != "op_threshs"}
            net.load_state_dict(state)
        module = DenseNetLogits(net.features, net.classifier, outputs)
    return ModelHandle(card=card, module=module.to(device), device=device, random_weights=path is None)


for _name, _key in XRV_CLASSIFIERS.items():
    register_model(_xrv_card(_name, _key), _load_xrv)


PSPNET_URL = "https://github.com/mlmed/torchxrayvision/releases/download/v1/pspnet_chestxray_best_model_4.pth"
PSPNET_STRUCTURES = ["Left Clavicle", "Right Clavicle", "Left Scapula", "Right Scapula", "Left Lung", "Right Lung",
                     "Left Hilus Pulmonis", "Right Hilus Pulmonis", "Heart", "Aorta", "Facies Diaphragmatica",
                     "Mediastinum", "Weasand", "Spine"]


class PSPNetLogits(nn.Module):
    """torchxrayvision's ChestX-Det PSPNet without its download-on-construction wrapper: [-1024, 1024] input at
    512 px -> one logit map per structure (sigmoid >= 0.5 is the structure)."""
    def __init__(self) -> None:
        super().__init__()

        self.net = pspnet(len(PSPNET_STRUCTURES))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x + 1024) / 2048).expand(-1, 3, -1, -1)  # the ImageNet-normalised RGB torchxrayvision feeds it
        return self.net((x - self.mean) / self.std)


def _pspnet_card() -> ModelCard:
    return ModelCard(
        name="xrv-pspnet",
        labels=list(PSPNET_STRUCTURES),
        input=InputSpec(channels=1, size=512, value_range=(-1024.0, 1024.0)),
        cam_layer="",
        feature_layer="",
        thresholds=dict.fromkeys(PSPNET_STRUCTURES, 0.5),
        provenance={"source": "torchxrayvision (ChestX-Det PSPNet, Lian et al. 2021)", "weights_url": PSPNET_URL},
        intended_use="Research and education: anatomy masks for SegX/SegU. Not a medical device.",
        family="segmenter",
        weights_file=os.path.basename(PSPNET_URL),
    )


def _load_pspnet(card: ModelCard, device: torch.device, allow_random_weights: bool) -> ModelHandle:
    module = PSPNetLogits()
    path = _weights_path(card)
    if path is None and not allow_random_weights:
        raise _missing(card)
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return ModelHandle(card=card, module=module.to(device), device=device, random_weights=path is None)


register_model(_pspnet_card(), _load_pspnet)
