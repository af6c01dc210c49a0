"""Image-text (CLIP-style) models: the bundled `demo-clip`, built from open_clip's own classes."""

from __future__ import annotations

from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from xai_core.models.base import ModelHandle
from xai_core.models.bundled import bundled_handle
from xai_core.models.cards import InputSpec, ModelCard
from xai_core.phantom import FINDINGS

DEFAULT_CLIP_ARCHITECTURE: dict[str, Any] = {
    "embed_dim": 128,
    "vision": {"image_size": 224, "patch_size": 32, "width": 256, "layers": 4, "head_width": 64, "mlp_ratio": 4.0},
    "conv_stem": [16, 32, 64, 128],
    "text": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}
# Zero-shot prompt families: (present, absent) templates over a label's clinical term. A model's manifest records
# which families it uses (chosen on the validation split at training time); their embeddings are averaged.
PROMPT_FAMILIES: dict[str, tuple[str, str]] = {
    "showing": ("a chest x-ray showing {term}", "a chest x-ray showing no {term}"),
    "sentence": ("{Term}.", "No {term}."),
    "impression": ("IMPRESSION: {Term}.", "IMPRESSION: No acute cardiopulmonary abnormality."),
}
DEFAULT_PROMPT_FAMILIES = ("showing",)
# The words radiologists (and the phantom reports) use for a label; anything else is the label in lower case.
CLINICAL_TERMS = {"Effusion": "pleural effusion", "Nodule": "pulmonary nodule", "Mass": "lung mass",
                  "Pleural_Thickening": "pleural thickening", "Lung Opacity": "lung opacity",
                  "Lung Lesion": "lung lesion", "Enlarged Cardiomediastinum": "enlarged cardiomediastinum"}


def clinical_term(label: str) -> str:
    """The phrase a prompt uses for a label."""
    return CLINICAL_TERMS.get(label, label.replace("_", " ").lower())


def conv_stem(channels: list[int], width: int) -> nn.Sequential:
    """Stride-2 3x3 convolutions down to the ViT's patch grid (/32), replacing the 32x32 patch embedding.

    Early convolutions make a small ViT trained from scratch learn much faster (Xiao et al. 2021).
    """
    layers: list[nn.Module] = []
    cin = 3
    for cout in channels:
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]
        cin = cout
    layers.append(nn.Conv2d(cin, width, 3, stride=2, padding=1))
    return nn.Sequential(*layers)


def build_demo_clip(architecture: dict[str, Any] | None = None) -> open_clip.CLIP:
    """An open_clip CLIP model with a small custom configuration (and an optional convolutional stem)."""
    arch = architecture or DEFAULT_CLIP_ARCHITECTURE
    model = open_clip.CLIP(
        embed_dim=arch["embed_dim"],
        vision_cfg=open_clip.model.CLIPVisionCfg(**arch["vision"]),
        text_cfg=open_clip.model.CLIPTextCfg(**arch["text"]),
    )
    if arch.get("conv_stem"):
        model.visual.conv1 = conv_stem(arch["conv_stem"], arch["vision"]["width"])
    return model


def tokenize(texts: list[str], context_length: int = 77) -> torch.Tensor:
    """open_clip's BPE tokenizer (its vocabulary ships inside the package: nothing is downloaded)."""
    return open_clip.tokenize(texts, context_length=context_length)


PIXEL_MEAN, PIXEL_STD = 0.5, 0.25  # the demo CLIP's input normalisation of [0, 1] grey pixels


def grey_to_clip_input(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, S, S] pixels in [0, 1] -> [B, 3, S, S] normalised input of the demo CLIP."""
    return ((x - PIXEL_MEAN) / PIXEL_STD).expand(-1, 3, -1, -1)


def encode_images(handle: ModelHandle, x: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings of a prepared input batch [B, 3, S, S]."""
    return F.normalize(handle.module.encode_image(x.to(handle.device)).float(), dim=-1)


def encode_texts(handle: ModelHandle, texts: list[str]) -> torch.Tensor:
    """L2-normalised text embeddings."""
    context = handle.module.context_length
    return F.normalize(handle.module.encode_text(tokenize(texts, context).to(handle.device)).float(), dim=-1)


def prompt_texts(label: str, family: str) -> tuple[str, str]:
    """The (present, absent) prompts of one label in one family."""
    term = clinical_term(label)
    present, absent = PROMPT_FAMILIES[family]
    words = {"term": term, "Term": term[:1].upper() + term[1:]}
    return present.format(**words), absent.format(**words)


def prompt_families(handle: ModelHandle) -> tuple[str, ...]:
    """The prompt families a model was validated with (its manifest's choice), else the default."""
    chosen = (handle.card.provenance.get("prompts") or {}).get("families")
    return tuple(chosen) if chosen else DEFAULT_PROMPT_FAMILIES


def label_embeddings(handle: ModelHandle, labels: list[str],
                     families: tuple[str, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per label, the averaged (present, absent) prompt embeddings over the families: two [L, D] tensors."""
    families = families or prompt_families(handle)
    unknown = [f for f in families if f not in PROMPT_FAMILIES]
    if unknown:
        raise ValueError(f"unknown prompt families {unknown}; known: {', '.join(PROMPT_FAMILIES)}")
    means = []
    for which in (0, 1):
        stacked = torch.stack([encode_texts(handle, [prompt_texts(label, f)[which] for label in labels])
                               for f in families])
        means.append(F.normalize(stacked.mean(0), dim=-1))
    return means[0], means[1]


def zero_shot_scores(handle: ModelHandle, image_embeddings: torch.Tensor, labels: list[str],
                     families: tuple[str, ...] | None = None) -> torch.Tensor:
    """P(label) per image from a softmax over the label's present vs absent prompts: [B, L]."""
    positive, negative = label_embeddings(handle, labels, families)
    scale = handle.module.logit_scale.exp().float()
    logits = torch.stack([image_embeddings @ positive.T, image_embeddings @ negative.T], -1) * scale
    return logits.softmax(-1)[..., 0]


def clip_card(name: str, entry: dict[str, Any]) -> ModelCard:
    arch = entry.get("architecture", DEFAULT_CLIP_ARCHITECTURE)
    return ModelCard(
        name=name,
        labels=list(entry.get("labels", FINDINGS)),
        input=InputSpec(3, arch["vision"]["image_size"], (-2.0, 2.0)),
        cam_layer="",
        feature_layer="",
        thresholds={},
        provenance={"source": "trained by xai_core/training on phantom image-report pairs",
                    "weights_sha256": entry.get("sha256"), "command": entry.get("command"),
                    "metrics": entry.get("metrics"), "architecture": arch, "prompts": entry.get("prompts"),
                    "init": entry.get("init")},
        intended_use="Demonstration only: an image-text model of the synthetic phantom world. Not for clinical use.",
        family="vlm",
        weights_file=entry.get("file", f"{name}.pt"),
    )


def load_demo_clip(card: ModelCard, device: torch.device, allow_random_weights: bool) -> ModelHandle:
    return bundled_handle(card, build_demo_clip(card.provenance["architecture"]), device, allow_random_weights,
                          "python -m xai_core train clip")
