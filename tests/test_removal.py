"""Removal operators (xai_core.removal), the training-time removal augmentation and the baseline self-check."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.sparse import lil_matrix
from scipy.sparse.linalg import spsolve

from xai_core import baselines, removal
from xai_core.models import InputSpec
from xai_core.phantom import FINDINGS, generate_case
from xai_core.training.augment import (
    GLOBAL_ONLY_FILLS,
    RemovalAugment,
    RemovalTransform,
    apply_removal,
    lesion_union,
    protected,
)
from xai_core.training.common import PhantomStream

SIZE = 48


def smooth_image(size: int = SIZE, phase: float = 0.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size, dtype=torch.float64),
                            torch.linspace(0, 1, size, dtype=torch.float64), indexing="ij")
    return (300 * torch.sin(2.0 * xx + 1.3 * yy + phase) + 200 * xx * yy - 100).float()


def box_mask(size: int = SIZE, top: int = 12, left: int = 16, height: int = 20, width: int = 14) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:top + height, left:left + width] = True
    return mask


def reference_linear_imputation(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ROAD's linear system, assembled pixel by pixel (independent of the batched solver) and solved directly."""
    h, w = image.shape
    unknown = np.argwhere(mask)
    index = -np.ones((h, w), int)
    index[mask] = np.arange(len(unknown))
    a = lil_matrix((len(unknown), len(unknown)))
    b = np.zeros(len(unknown))
    weights = {(dy, dx): (1 / 6 if dy == 0 or dx == 0 else 1 / 12)
               for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)}
    for k, (i, j) in enumerate(unknown):
        for (dy, dx), weight in weights.items():
            y, x = i + dy, j + dx
            if 0 <= y < h and 0 <= x < w:
                a[k, k] += weight
                if mask[y, x]:
                    a[k, index[y, x]] -= weight
                else:
                    b[k] += weight * image[y, x]
    out = image.astype(np.float64).copy()
    out[mask] = spsolve(a.tocsc(), b)
    return out


def test_linear_imputation_matches_a_direct_solve_of_roads_system():
    image = smooth_image().numpy() + np.random.default_rng(0).normal(0, 20, (SIZE, SIZE)).astype(np.float32)
    mask = box_mask().numpy()
    mask[30:40, 2:9] = True  # a second region touching nothing of the first
    mask[0:5, 40:48] = True  # one at the image corner (border weights renormalised)
    expected = reference_linear_imputation(image, mask)
    got = removal.linear_impute(torch.from_numpy(image), torch.from_numpy(mask), tol=1e-7, iterations=2000)
    np.testing.assert_allclose(got.numpy(), expected, atol=0.02)


def test_road_on_a_smooth_image_is_close_to_the_truth_and_keeps_unmasked_pixels():
    image = smooth_image()
    mask = box_mask()
    out = removal.road(image, mask, noise=0.0)
    error = (out - image)[mask].abs()
    span = float(image.max() - image.min())
    assert float(error.max()) < 0.05 * span and float(error.mean()) < 0.03 * span, float(error.max())
    assert torch.equal(out[~mask], image[~mask])
    noisy = removal.road(image, mask, noise=0.01, seed=3)
    residual = (noisy - out)[mask]
    assert abs(float(residual.std()) - 0.01 * 2048) < 0.2 * 0.01 * 2048  # noise is a fraction of the model range
    assert torch.equal(noisy[~mask], image[~mask])


def test_linear_functions_are_reproduced_exactly():
    yy, xx = torch.meshgrid(torch.arange(SIZE, dtype=torch.float64), torch.arange(SIZE, dtype=torch.float64),
                            indexing="ij")
    ramp = 3.0 * xx - 2.0 * yy + 10.0
    mask = box_mask()
    out = removal.linear_impute(ramp, mask, tol=1e-10, iterations=1000)
    torch.testing.assert_close(out, ramp, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", removal.METHODS)
def test_every_method_keeps_unmasked_pixels_bit_for_bit_and_is_deterministic(method):
    image = smooth_image()[None, None].repeat(3, 1, 1, 1) + torch.arange(3.0).view(3, 1, 1, 1)
    mask = box_mask()
    params = {"noise": 0.02} if method in ("road", "blur", "mean") else {}
    a = removal.remove(image, mask, method, seed=5, **params)
    b = removal.remove(image, mask, method, seed=5, **params)
    assert torch.equal(a, b)
    assert a.shape == image.shape
    keep = ~mask.expand_as(image)
    assert torch.equal(a[keep], image[keep])
    assert not torch.equal(a[~keep], image[~keep])
    if params:
        assert not torch.equal(a, removal.remove(image, mask, method, seed=6, **params))
    assert float(a.min()) >= -1024 and float(a.max()) <= 1024


@pytest.mark.parametrize("method", ["road", "blur", "mean"])
def test_a_batch_gives_what_each_image_gives_alone(method):
    images = torch.stack([smooth_image(phase=p) for p in (0.0, 0.7, 1.9)])[:, None]
    masks = torch.stack([box_mask(), box_mask(top=2, left=2, height=40, width=40), box_mask(top=30, height=5)])
    batched = removal.remove(images, masks[:, None], method, noise=0.0)
    for i in range(3):
        alone = removal.remove(images[i:i + 1], masks[i][None, None], method, noise=0.0)
        torch.testing.assert_close(batched[i:i + 1], alone, atol=0.05, rtol=0)


def test_soft_masks_blend_and_full_removal_has_a_defined_baseline():
    image = smooth_image()
    half = torch.full((SIZE, SIZE), 0.5)
    blended = removal.mean(image, half)
    torch.testing.assert_close(blended, 0.5 * image + 0.5 * image.mean(), atol=1e-3, rtol=0)
    gone = removal.fully_removed(image, "road", noise=0.0)
    torch.testing.assert_close(gone, torch.full_like(image, float(image.mean())), atol=1e-3, rtol=0)
    blurred = removal.fully_removed(image[None, None], "blur", sigma=4.0)
    assert blurred.shape == (1, 1, SIZE, SIZE) and float((blurred[0, 0] - image).abs().max()) > 0


def test_names_describe_the_method_and_its_parameters():
    assert removal.DEFAULT_METHOD == "road"
    assert removal.describe() == "road(noise=0.01)"
    assert removal.describe("blur", sigma=12.0) == "blur(sigma=12, noise=0)"
    with pytest.raises(ValueError, match="unknown removal"):
        removal.remove(smooth_image(), box_mask(), "inpaint")
    with pytest.raises(ValueError, match="takes"):
        removal.remove(smooth_image(), box_mask(), "mean", sigma=3.0)


def test_gaussian_blur_preserves_constants_and_matches_the_sigma():
    flat = torch.full((1, 1, SIZE, SIZE), 7.0)
    torch.testing.assert_close(removal.gaussian_blur(flat, 5.0), flat)
    impulse = torch.zeros(1, 1, 41, 41)
    impulse[0, 0, 20, 20] = 1
    out = removal.gaussian_blur(impulse, 3.0)[0, 0, 20]
    offsets = torch.arange(41.0) - 20
    variance = float((out * offsets**2).sum() / out.sum())
    assert math.isclose(variance, 9.0, rel_tol=0.02)


# --- training-time removal augmentation -----------------------------------------------------------------------

def test_augmentation_never_touches_a_lesion_and_keeps_labels():
    augment = RemovalAugment(rate=1.0)
    stream = PhantomStream("train", 0, 12, seed=0, size=96, transform=RemovalTransform(augment, 0))
    plain = list(PhantomStream("train", 0, 12, seed=0, size=96))
    changed = 0
    for index, (item, original) in enumerate(zip(stream, plain, strict=True)):
        case = generate_case("train", index, seed=0, size=96)
        keep = torch.from_numpy(protected(lesion_union(case), augment.protect_px))[None]
        assert torch.equal(item["x"][keep], original["x"][keep])
        assert torch.equal(item["y"], original["y"])
        changed += int(not torch.equal(item["x"], original["x"]))
    assert changed >= 10


def test_augmentation_is_deterministic_and_covers_every_region_and_fill():
    transform = RemovalTransform(RemovalAugment(rate=0.5), data_seed=0)
    a = [item["x"] for item in PhantomStream("train", 0, 6, seed=0, size=64, transform=transform)]
    b = [item["x"] for item in PhantomStream("train", 0, 6, seed=0, size=64, transform=transform)]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    seen = set()
    x = torch.zeros(1, 64, 64)
    lesions = np.zeros((64, 64), bool)
    lesions[20:30, 20:30] = True
    donor = generate_case("train", 0, seed=100, size=64)
    for i in range(120):
        out, info = apply_removal(x + 100, lesions, RemovalAugment(), np.random.default_rng(i), lambda: donor)
        seen.add(info["region"])
        seen.add(info["fill"])
        if info["fill"] in GLOBAL_ONLY_FILLS:
            assert info["region"] == "whole", "a local patch of a flat fill would look like an opacity"
        assert torch.equal(out[0, 20:30, 20:30], torch.full((10, 10), 100.0))
    assert {"whole", "boxes", "ellipses", "blobs", "scatter", "road", "blur", "blur_noise", "mean", "constant",
            "texture", "noise"} <= seen


# --- baseline self-check -----------------------------------------------------------------------------------------

class _ReadsDarkAsEffusion(torch.nn.Module):
    """Logit of Effusion high when the image is dark on average, every other label low."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], len(FINDINGS)), -8.0)
        logits[:, FINDINGS.index("Effusion")] = -(x.mean(dim=(1, 2, 3)) + 300) / 20
        return logits


def test_baseline_check_flags_a_finding_whose_removal_baseline_reads_positive():
    card = SimpleNamespace(name="toy", labels=list(FINDINGS), thresholds=dict.fromkeys(FINDINGS, 0.5),
                           input=InputSpec(1, 64, (-1024.0, 1024.0)))
    handle = SimpleNamespace(card=card, module=_ReadsDarkAsEffusion(), device=torch.device("cpu"))
    check = baselines.check_baselines(handle, n=6, recipes=["mean", "constant_-600", "zero"])
    assert check["data"] == {"split": "test", "seed": baselines.HELD_OUT_SEED, "indices": [0, 6], "size": 64}
    assert check["recipes"]["constant_-600"]["reads_positive"] == ["Effusion"]
    assert check["recipes"]["constant_-600"]["probability"]["Effusion"] > 0.99
    assert check["recipes"]["zero"]["reads_positive"] == [] and check["recipes"]["zero"]["passes"]
    assert check["passes"] is False
    assert baselines.invalid_findings(check, "constant") == []
    assert "READS POSITIVE: Effusion" in baselines.format_table(check)


# --- removal metrics and the self-check in evaluation ------------------------------------------------------------

def test_deletion_and_faithfulness_with_the_default_imputation_tell_a_right_map_from_a_wrong_one():
    from xai_core.metrics.faithfulness import deletion_insertion, faithfulness_correlation

    rng = np.random.default_rng(0)
    texture = rng.uniform(-1, 1, (32, 32))
    region = np.zeros((32, 32), bool)
    region[8:16, 10:20] = True
    image = (0.4 + 0.2 * texture * region).astype(np.float32)

    def score(images: np.ndarray) -> np.ndarray:  # how much of the region's texture is intact
        intact = (texture[region] * (images[:, region] - 0.4)).mean(1) / (0.2 * (texture[region] ** 2).mean())
        return 1 / (1 + np.exp(-8 * (intact - 0.4)))

    remover = removal.numpy_remover()
    right = region + 1e-6 * rng.random((32, 32))
    wrong = ~region + 1e-6 * rng.random((32, 32))
    good, bad = (deletion_insertion(image, m, score, remover=remover) for m in (right, wrong))
    assert good["deletion_auc"] < bad["deletion_auc"] and good["insertion_auc"] > bad["insertion_auc"]
    assert faithfulness_correlation(image, right, score, remover=remover) > 0.5
    with pytest.raises(ValueError, match="remover"):
        deletion_insertion(image, right, score)
    kept = remover(image[None], region[None])[0]
    assert np.array_equal(kept[~region], image[~region]) and kept.dtype == np.float32


def test_the_summary_leaves_invalid_findings_out_of_a_metrics_mean_and_says_so(tmp_path):
    from xai_core.evaluation.reports import summarise_table

    table = tmp_path / "per_image.csv"
    table.write_text("case_id,finding,method,seconds,deletion_auc,relevance_mass\n"
                     "a,Effusion,gradcam,0.1,0.9,0.5\nb,Mass,gradcam,0.1,0.2,0.7\nc,Mass,gradcam,0.1,0.4,0.3\n")
    summary = summarise_table(table, ["gradcam"], ["deletion_auc", "relevance_mass"],
                              invalid={"deletion_auc": ["Effusion"]})
    cell = summary["gradcam"]["deletion_auc"]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(0.3)
    assert cell["invalid_findings"] == ["Effusion"] and cell["n_invalid"] == 1
    assert summary["gradcam"]["relevance_mass"]["n"] == 3 and "invalid_findings" not in summary["gradcam"][
        "relevance_mass"]


def test_the_runners_self_check_invalidates_the_removal_metrics_of_a_finding_whose_baseline_reads_positive():
    from xai_core.evaluation.runner import baseline_self_check

    card = SimpleNamespace(name="toy", labels=list(FINDINGS), thresholds=dict.fromkeys(FINDINGS, 0.5),
                           input=InputSpec(1, 64, (-1024.0, 1024.0)))

    class ReadsFlatAsEffusion(torch.nn.Module):  # Effusion when the image has no texture at all
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.full((x.shape[0], len(FINDINGS)), -8.0)
            logits[:, FINDINGS.index("Effusion")] = 4.0 - x.std(dim=(1, 2, 3))
            return logits

    handle = SimpleNamespace(card=card, module=ReadsFlatAsEffusion(), device=torch.device("cpu"))
    check = baseline_self_check(handle, "mean", 8, ["relevance_mass", "deletion_auc", "faithfulness_corr"])
    assert check["recipe"] == "mean" and check["reads_positive"] == ["Effusion"]
    assert check["invalid"] == {"deletion_auc": ["Effusion"], "faithfulness_corr": ["Effusion"]}
    assert baseline_self_check(handle, "mean", 8, ["relevance_mass"]) is None
