"""The bundled demo models: weights match the manifest, they load through the registry, and a held-out
evaluation (phantom test cases, seeds never used in training) recomputes their metrics above the bars."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from xai_core.errors import MissingWeightsError, ModelError
from xai_core.models import get_card, list_models, load_model
from xai_core.models.base import sha256_file
from xai_core.models.bundled import MANIFEST, MODELS_DIR
from xai_core.phantom import ANATOMY, FINDINGS
from xai_core.training.common import PhantomStream, auroc_per_label

MANIFEST_MODELS = json.loads(MANIFEST.read_text())["models"]
HELD_OUT = 400  # test-split cases; the first 1000 were used for the manifest's metrics, these are 2000..2399
OFFSET = 2000


def test_manifest_records_every_bundled_model():
    for name in ("demo", "demo-anatomy", "demo-clip"):
        entry = MANIFEST_MODELS[name]
        path = MODELS_DIR / entry["file"]
        assert path.is_file(), f"{path} is committed"
        assert sha256_file(path) == entry["sha256"]
        assert entry["command"].startswith("python -m xai_core train")
        assert {"seeds", "data", "metrics", "train_seconds"} <= set(entry)
    total = sum((MODELS_DIR / e["file"]).stat().st_size for e in MANIFEST_MODELS.values())
    assert total <= 40 * 2**20, f"bundled weights are {total / 2**20:.1f} MB"


def test_registry_loads_the_demo_family():
    assert list_models()[0] == "demo", "the demo classifier is the default"
    assert {"demo-anatomy", "demo-clip"} <= set(list_models(None))
    for name in ("demo", "demo-anatomy", "demo-clip"):
        handle = load_model(name)
        assert handle.random_weights is False
    card = get_card("demo")
    assert card.labels == list(FINDINGS)
    assert all(0.0 < card.thresholds[label] < 1.0 for label in FINDINGS)
    assert "not for clinical use" in card.intended_use.lower()


def test_tampered_weights_are_refused(tmp_path, monkeypatch):
    import xai_core.models.bundled as bundled

    bad = tmp_path / MANIFEST_MODELS["demo"]["file"]
    bad.write_bytes(b"not the weights")
    monkeypatch.setattr(bundled, "MODELS_DIR", tmp_path)
    with pytest.raises(ModelError, match="sha256"):
        load_model("demo")


def _batches(n: int, **kwargs) -> DataLoader:
    return DataLoader(PhantomStream("test", OFFSET, n, **kwargs), batch_size=50, num_workers=0)


def test_held_out_classifier_auroc_above_the_bars():
    handle = load_model("demo")
    ys, ps = [], []
    with torch.inference_mode():
        for batch in _batches(HELD_OUT):
            ps.append(torch.sigmoid(handle.module(batch["x"])).numpy())
            ys.append(batch["y"].numpy())
    auroc = auroc_per_label(np.concatenate(ys), np.concatenate(ps))
    assert np.mean(list(auroc.values())) >= 0.95, auroc
    assert min(auroc.values()) >= 0.90, auroc


def test_held_out_segmenter_dice_above_the_bar():
    handle = load_model("demo-anatomy")
    dice = {name: [] for name in ANATOMY}
    with torch.inference_mode():
        for batch in _batches(100, with_anatomy=True):
            predicted = torch.sigmoid(handle.module(batch["x"])) >= 0.5
            target = batch["anatomy"] > 0.5
            inter = (predicted & target).sum((2, 3)).float()
            total = (predicted.sum((2, 3)) + target.sum((2, 3))).float().clamp(min=1)
            for i, name in enumerate(ANATOMY):
                dice[name].extend((2 * inter[:, i] / total[:, i]).tolist())
    for name in ("right_lung", "left_lung", "heart"):
        assert np.mean(dice[name]) >= 0.90, (name, np.mean(dice[name]))


def test_held_out_clip_zero_shot_auroc_above_the_bar():
    from xai_core.models.vlm import encode_images, grey_to_clip_input, prompt_families, zero_shot_scores

    handle = load_model("demo-clip")
    assert prompt_families(handle) == tuple(MANIFEST_MODELS["demo-clip"]["prompts"]["families"]), \
        "zero-shot uses the prompt families chosen on val at training time"
    ys, scores = [], []
    with torch.inference_mode():
        for batch in _batches(HELD_OUT):
            embeddings = encode_images(handle, grey_to_clip_input((batch["x"] + 1024.0) / 2048.0))
            scores.append(zero_shot_scores(handle, embeddings, list(FINDINGS)).numpy())
            ys.append(batch["y"].numpy())
    auroc = auroc_per_label(np.concatenate(ys), np.concatenate(scores))
    assert np.mean(list(auroc.values())) >= 0.85, auroc


def test_missing_bundled_weights_say_how_to_rebuild(tmp_path, monkeypatch):
    import xai_core.models.bundled as bundled

    monkeypatch.setattr(bundled, "MODELS_DIR", tmp_path)
    with pytest.raises(MissingWeightsError, match="train classifier"):
        load_model("demo")
    assert load_model("demo", allow_random_weights=True).random_weights
