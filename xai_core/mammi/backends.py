"""Image-text backends for concept matching: the bundled `demo-clip` and any open_clip model, behind one interface."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from xai_core.models import get_card, load_model
from xai_core.models.base import find_weights
from xai_core.models.vlm import PIXEL_MEAN, PIXEL_STD, tokenize


class ImageTextModel(Protocol):
    """A CLIP-style model: L2-normalised image and text embeddings in one space."""
    name: str
    image_size: int  # the input size its image tower expects

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """[B, 1, S, S] grey pixels in [0, 1] (any S) -> [B, D] float32."""
        ...

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """[T] strings -> [T, D] float32."""
        ...


class OpenClipBackend:
    """An open_clip CLIP model (the bundled demo-clip is one too): grey pixels are resized, replicated to 3 channels
    and normalised as the model's preprocessing expects."""
    def __init__(self, name: str, model: torch.nn.Module, tokenizer, image_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], device: torch.device | str = "cpu", batch_size: int = 64) -> None:
        self.name, self.model, self.tokenizer = name, model.eval(), tokenizer
        self.image_size, self.device, self.batch_size = image_size, torch.device(device), batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        out = []
        for start in range(0, len(pixels), self.batch_size):
            x = pixels[start:start + self.batch_size].float()
            if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                                  antialias=True)
            x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
            out.append(F.normalize(self.model.encode_image(x.to(self.device)).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), 256):
            tokens = self.tokenizer(texts[start:start + 256]).to(self.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out).numpy()


def load_backend(spec: str, device: torch.device | str = "cpu", *, allow_random_weights: bool = False
                 ) -> ImageTextModel:
    """`demo-clip` (bundled) or `openclip:<arch>:<pretrained>`, where <pretrained> is an open_clip tag whose weights
    are already on disk, a path to a weights file, or `random` (tests only)."""
    if spec.startswith("openclip:"):
        parts = spec.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(f"'{spec}': expected openclip:<arch>:<pretrained>")
        return _open_clip_backend(spec, parts[1], parts[2], device)

    card = get_card(spec)
    if card.family != "vlm":
        raise ValueError(f"'{spec}' is a {card.family} model, not an image-text model")
    handle = load_model(spec, device, allow_random_weights=allow_random_weights)

    context = handle.module.context_length
    return OpenClipBackend(spec, handle.module, lambda texts: tokenize(texts, context), card.input.size,
                           (PIXEL_MEAN,) * 3, (PIXEL_STD,) * 3, device)


def _open_clip_backend(spec: str, arch: str, pretrained: str, device: torch.device | str) -> OpenClipBackend:
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture '{arch}'")
    model = open_clip.create_model(arch, pretrained=None)
    if pretrained != "random":
        path = Path(pretrained).expanduser()
        if not path.is_file():
            found = find_weights(f"open_clip_{arch}_{pretrained}.bin") or find_weights(f"{arch}-{pretrained}.pt")
            if found is None:
                raise FileNotFoundError(
                    f"no weights for {spec}: nothing is downloaded here. Put the checkpoint file in $XAI_WEIGHTS_DIR "
                    f"as open_clip_{arch}_{pretrained}.bin, or give its path: openclip:{arch}:/path/to/weights")
            path = found
        open_clip.load_checkpoint(model, str(path))
    cfg = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else int(size)
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return OpenClipBackend(spec, model.to(device), open_clip.get_tokenizer(arch), size, mean, std, device)
