"""A neuron's activation overlaid on its representative images (xai_core.mammi.overlays) and probe images by id."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import xai_core.mammi.overlays as overlays
from xai_core.errors import InputError, ParameterError
from xai_core.mammi import (
    AnnotationStore,
    activation_maps,
    bundled_annotation,
    neuron_overlay,
    probe_images,
    probe_set,
    representative_overlays,
)


@pytest.fixture(scope="module")
def demo():
    from xai_core.models import load_model

    return load_model("demo")


@pytest.fixture(scope="module")
def features() -> AnnotationStore:
    path = bundled_annotation("demo", "features")
    assert path is not None, "the demo model ships its feature-layer annotation"
    return AnnotationStore(path)


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image)


def test_probe_images_by_id_are_the_images_the_annotation_probed(tmp_path):
    probe = probe_set("phantom:train", 6)
    ids = [probe.ids[4], probe.ids[1]]
    np.testing.assert_array_equal(probe_images("phantom:train", ids, 32).numpy(), probe.load([4, 1], 32).numpy())
    assert probe_images("phantom:train", [], 32).shape == (0, 1, 32, 32)
    for bad in ("val-0-000001", "train-0-abc", "train-0-"):
        with pytest.raises(InputError, match="not an image of the probing set"):
            probe_images("phantom:train", [bad], 32)
    folder = tmp_path / "probe"
    folder.mkdir()
    for k in range(2):
        Image.fromarray(np.full((40, 50), 60 * (k + 1), np.uint8)).save(folder / f"case{k}.png")
    (tmp_path / "outside.png").write_bytes((folder / "case0.png").read_bytes())
    on_disk = probe_set(str(folder), 10)
    assert on_disk.load([0, 1], 16).shape == (2, 1, 16, 16), "a folder probe loads [B, 1, S, S] like a phantom one"
    np.testing.assert_array_equal(probe_images(str(folder), on_disk.ids, 16).numpy(), on_disk.load([0, 1], 16))
    with pytest.raises(InputError, match="not under"):
        probe_images(str(folder), ["../outside.png"], 16)
    with pytest.raises(InputError, match="not under"):
        probe_images(str(folder), ["missing.png"], 16)


def test_feature_maps_average_to_the_activations_the_annotation_stored(demo, features):
    meta = features.meta()
    for neuron in features.neuron_ids()[:3]:
        record = features.neuron(neuron)
        pixels = probe_images(meta["probe"], record.representatives[:4], demo.card.input.size)[:, 0].numpy()
        maps = activation_maps(demo, "features", neuron, list(pixels))
        assert all(m.shape == (7, 7) and (m >= 0).all() for m in maps)
        np.testing.assert_allclose([m.mean() for m in maps], record.activations[:4], rtol=1e-4, atol=1e-5)


def test_neuron_overlay_is_a_deterministic_png_at_the_model_input_size(demo, features):
    record = features.neuron(features.neuron_ids()[0])
    image = probe_images(features.meta()["probe"], record.representatives[:1], 300)[0, 0].numpy()
    overlays.clear_cache()
    first = neuron_overlay(demo, "features", record.neuron, image)
    again = neuron_overlay(demo, "features", record.neuron, image)
    overlays.clear_cache()
    fresh = neuron_overlay(demo, "features", record.neuron, image)
    assert first == again == fresh, "the same image, neuron and weights give the same bytes, cached or not"
    rgb = decode(first)
    assert rgb.shape == (demo.card.input.size, demo.card.input.size, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] != rgb[..., 2]).any(), "the activation is coloured in"
    other = neuron_overlay(demo, "features", features.neuron_ids()[1], image)
    assert other != first, "another neuron fires elsewhere or otherwise"
    plain = decode(neuron_overlay(demo, "features", record.neuron, image, opacity=0.0))
    assert (plain[..., 0] == plain[..., 2]).all(), "opacity 0: the grey image alone"
    for layer, neuron in (("output", 0), ("output", 6)):
        assert decode(neuron_overlay(demo, layer, neuron, image)).shape == rgb.shape
    with pytest.raises(ParameterError):
        neuron_overlay(demo, "features", 10_000, image)
    with pytest.raises(ParameterError):
        neuron_overlay(demo, "output", 7, image)
    with pytest.raises(ParameterError):
        neuron_overlay(demo, "logits", 0, image)
    with pytest.raises(ParameterError):
        neuron_overlay(demo, "features", 0, np.zeros((2, 8, 8)))


def test_representative_overlays_sit_on_their_images_and_forward_once(demo, features, monkeypatch):
    meta = features.meta()
    record = max(features.neurons(), key=lambda r: len(r.representatives))
    ids = record.representatives[:10]
    calls = []
    real = overlays.feature_maps
    monkeypatch.setattr(overlays, "feature_maps", lambda *a: calls.append(len(a[1])) or real(*a))
    overlays.clear_cache()
    plain = representative_overlays(demo, "features", record.neuron, meta["probe"], ids, opacity=0.0)
    pixels = probe_images(meta["probe"], ids, demo.card.input.size)[:, 0].numpy()
    assert len(plain) == len(ids)
    for png, image in zip(plain, pixels, strict=True):
        np.testing.assert_array_equal(decode(png)[..., 0], (np.clip(image, 0, 1) * 255).astype(np.uint8))
    coloured = representative_overlays(demo, "features", record.neuron, meta["probe"], ids)
    assert calls == [len(ids)], "one batched forward pass; the second call reads the cached maps"
    assert all(a != b for a, b in zip(plain, coloured, strict=True))
