"""The phantom's simulated radiologist gaze: deterministic, inside the film, a systematic search over the anatomy,
conspicuity-driven dwell on lesions, satisfaction of search, and dwell and read times in the stated ranges."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

import numpy as np
import pytest

from xai_core.metrics.gaze import read_fixations
from xai_core.phantom import ANATOMY, GAZE_VERSION, PHANTOM_VERSION, generate_case
from xai_core.phantom.gaze import DEFAULT_PARAMS, GazeParams, conspicuity, simulate_fixations
from xai_core.phantom.writers import fixations_csv, write_split

SIZE = 224
PX_PER_DEG = SIZE / DEFAULT_PARAMS.film_width_deg
# sha256 over images, labels, attributes, meta and masks of the tag-free cases in _digest_cases (reports left out):
# those of PHANTOM_VERSION 2, on which the bundled tag-free image models were trained (checked against the generator
# of PHANTOM_VERSION 3, commit 4a0309e, when the tag world changed)
EXPECTED_CASES_SHA256 = "fba4b9e1c6b4f9c302fe223b21a90f97422c815d43873628f9a2057c3041145f"
# the same with the reports of PHANTOM_VERSION 3 (change it only with a PHANTOM_VERSION bump)
EXPECTED_WITH_REPORTS_SHA256 = "63a1e558c531e401c8a0224bdb0554bd077b522cce9d57f09a25422b4d663a12"
# tag-free pneumothoraces, computed with the generator of PHANTOM_VERSION 3 (commit 4a0309e): the tag world's change
# must not reach them
EXPECTED_TAG_FREE_PNEUMOTHORAX_SHA256 = "ce6a3fa3f272779382ae1dbbcb9a6a283cc0ad42c95d821081e51714c18b804f"
# the tag world (PHANTOM_VERSION 4: its pneumothorax fades with the case's visibility; demo-shortcut and its twins
# are trained on it)
EXPECTED_TAG_WORLD_SHA256 = "7854447b0e2f63d4c0641ba71205c6de2fc4f0999de342c208ca947bc1b4e8ee"


def _digest_tag_free_pneumothorax() -> str:
    digest = hashlib.sha256()
    for index in range(4):
        case = generate_case("train", index, seed=0, size=128, findings=["Pneumothorax"])
        digest.update(case.image.tobytes())
        digest.update(json.dumps(case.attributes, sort_keys=True).encode())
        digest.update(np.packbits(case.lesions["Pneumothorax"]).tobytes())
    return digest.hexdigest()


def _digest_tag_world() -> str:
    digest = hashlib.sha256()
    cases = [generate_case("train", index, seed=0, size=256, shortcut=0.9) for index in range(6)]
    cases += [generate_case("train", index, seed=0, size=128, shortcut=0.9, findings=["Pneumothorax"])
              for index in range(4)]
    for case in cases:
        digest.update(case.report.encode())
        digest.update(str(case.shortcut).encode())
        digest.update(case.image.tobytes())
        digest.update(json.dumps(case.attributes, sort_keys=True).encode())
        for name in sorted(case.lesions):
            digest.update(np.packbits(case.lesions[name]).tobytes())
    return digest.hexdigest()


def _digest_cases(draw_gaze: bool, with_reports: bool = False) -> str:
    digest = hashlib.sha256()
    for split, indices, seed, size, shortcut in (("test", range(12), 11, 224, None), ("val", range(4), 3, 128, None)):
        for index in indices:
            case = generate_case(split, index, seed=seed, size=size, shortcut=shortcut)
            if draw_gaze:
                assert len(case.fixations)
            digest.update(case.case_id.encode())
            digest.update(case.image.tobytes())
            digest.update("|".join(case.labels).encode())
            if with_reports:
                digest.update(case.report.encode())
            digest.update(json.dumps(case.attributes, sort_keys=True).encode())
            digest.update(json.dumps(case.meta, sort_keys=True, default=str).encode())
            digest.update(str(case.shortcut).encode())
            for name in ANATOMY:
                digest.update(np.packbits(case.anatomy[name]).tobytes())
            for name in sorted(case.lesions):
                digest.update(name.encode())
                digest.update(np.packbits(case.lesions[name]).tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _sample(n: int = 160) -> list:
    """Test cases (seed 11, 224 px) with their fixations and, per lesion: area, conspicuity, fixations on it."""
    out = []
    for index in range(n):
        case = generate_case("test", index, seed=11, size=SIZE)
        fixations = case.fixations
        xs, ys = np.round(fixations[:, 2]).astype(int), np.round(fixations[:, 3]).astype(int)
        scores = conspicuity(case.image, case.anatomy, case.lesions)
        per_lesion = {name: (int(mask.sum()), scores[name], mask[ys, xs]) for name, mask in case.lesions.items()}
        out.append((case, fixations, per_lesion))
    return out


def _on_any_lesion(per_lesion: dict, n: int) -> np.ndarray:
    hits = np.zeros(n, bool)
    for _, _, hit in per_lesion.values():
        hits |= hit
    return hits


def test_images_labels_and_masks_are_unchanged_and_reports_pinned():
    assert _digest_cases(draw_gaze=False) == EXPECTED_CASES_SHA256, "images, labels, masks as in PHANTOM_VERSION 2"
    assert _digest_cases(draw_gaze=True) == EXPECTED_CASES_SHA256, "drawing the gaze changes nothing else"
    assert PHANTOM_VERSION == 4
    assert _digest_cases(draw_gaze=True, with_reports=True) == EXPECTED_WITH_REPORTS_SHA256
    assert _digest_tag_free_pneumothorax() == EXPECTED_TAG_FREE_PNEUMOTHORAX_SHA256, "the tag-free pneumothorax"
    assert _digest_tag_world() == EXPECTED_TAG_WORLD_SHA256, "the tag world's pneumothorax of PHANTOM_VERSION 4"


def test_gaze_is_deterministic_per_case_and_uses_only_its_stream():
    a, b = generate_case("test", 7, seed=11, size=SIZE), generate_case("test", 7, seed=11, size=SIZE)
    other = generate_case("test", 8, seed=11, size=SIZE)
    np.random.seed(1)
    state = np.random.get_state()[1].copy()
    first = a.fixations
    between = other.fixations  # drawing another case's gaze in between changes nothing
    np.testing.assert_array_equal(first, b.fixations)
    assert np.array_equal(np.random.get_state()[1], state), "the global numpy stream is untouched"
    assert between.shape != first.shape or not np.array_equal(between, first)
    assert a.fixations is first, "drawn once, then kept"
    runs = [simulate_fixations(np.random.default_rng(5), a.image, a.anatomy, a.lesions, SIZE) for _ in range(2)]
    np.testing.assert_array_equal(*runs)
    assert not np.array_equal(runs[0], simulate_fixations(np.random.default_rng(6), a.image, a.anatomy, a.lesions,
                                                          SIZE))
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_PARAMS.ufov_deg = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("size", [128, 224, 256])
def test_fixations_keep_the_reflacx_layout_inside_the_image(size, tmp_path):
    for index in range(10):
        case = generate_case("val", index, size=size)
        fixations = case.fixations
        assert fixations.dtype == np.float64 and fixations.ndim == 2 and fixations.shape[1] == 4
        assert np.all(fixations[:, 2:] >= 0) and np.all(fixations[:, 2:] <= size - 1)
        assert np.all(np.diff(fixations[:, 0]) > 0) and np.all(fixations[:, 1] > fixations[:, 0])
        assert np.all(fixations[1:, 0] >= fixations[:-1, 1]), "no two fixations overlap in time"
    path = tmp_path / "fixations.csv"
    path.write_text(fixations_csv(case))
    read = read_fixations(path)
    np.testing.assert_allclose(read[:, :2], fixations[:, 2:], atol=0.051)
    np.testing.assert_allclose(read[:, 2], (fixations[:, 1] - fixations[:, 0]) / 1000, atol=0.0011)


def test_the_search_covers_the_normal_anatomy_zone_by_zone():
    sample = _sample()[:40]
    on_lesion = off_lesion = 0
    covered = {name: 0 for name in ("right_lung", "left_lung", "heart", "mediastinum")}
    zones_hit = []
    for case, fixations, per_lesion in sample:
        hits = _on_any_lesion(per_lesion, len(fixations))
        on_lesion += hits.sum()
        off_lesion += (~hits).sum()
        # >= 7 since GAZE_VERSION 3 (new draws, same simulator): test-11-000023 (Cardiomegaly, whose lesion is the
        # whole heart, and Effusion) has 7 of 20 fixations off its lesions; the least over 160 cases
        assert (~hits).sum() >= 7, "every read searches normal anatomy too"
        xs, ys = np.round(fixations[:, 2]).astype(int), np.round(fixations[:, 3]).astype(int)
        for name in covered:
            covered[name] += bool(case.anatomy[name][ys, xs].any())
        for name in ("right_lung", "left_lung"):
            rows = np.flatnonzero(case.anatomy[name].any(1))
            inside = case.anatomy[name][ys, xs]
            zone = np.minimum(2, (ys[inside] - rows[0]) * 3 // (rows[-1] - rows[0] + 1))
            zones_hit.append(len(set(zone.tolist())))
    assert off_lesion / (on_lesion + off_lesion) > 0.6, "most fixations fall on normal anatomy"
    assert on_lesion > 0
    assert all(count >= 38 for count in covered.values()), covered
    assert np.mean(np.array(zones_hit) == 3) > 0.85, "upper, middle and lower zone of each lung"


def test_conspicuous_lesions_draw_more_fixations_and_small_ones_are_missed():
    rows = [(area, score, int(hit.sum())) for _, _, per_lesion in _sample()
            for area, score, hit in per_lesion.values()]
    area, score, count = (np.array(column, float) for column in zip(*rows, strict=True))
    low, high = np.percentile(area, [100 / 3, 200 / 3])
    small, large = count[area <= low], count[area > high]
    assert len(small) >= 30 and len(large) >= 30
    assert np.mean(large > 0) > 0.95 and large.mean() > 2 * small.mean()
    assert 0.05 < np.mean(small == 0) < 0.7, "some small lesions are missed, not all"
    assert np.corrcoef(np.argsort(np.argsort(score)), np.argsort(np.argsort(count)))[0, 1] > 0.3
    nodules = [int(hit.sum()) for _, _, per_lesion in _sample() for name, (_, _, hit) in per_lesion.items()
               if name == "Nodule"]
    masses = [int(hit.sum()) for _, _, per_lesion in _sample() for name, (_, _, hit) in per_lesion.items()
              if name == "Mass"]
    assert np.mean(masses) > 2 * np.mean(nodules) and min(masses) >= 1
    assert any(n == 0 for n in nodules)


def test_dwell_is_longer_on_conspicuous_lesions():
    on, off, large = [], [], []
    for _, fixations, per_lesion in _sample():
        durations = fixations[:, 1] - fixations[:, 0]
        hits = _on_any_lesion(per_lesion, len(fixations))
        on.extend(durations[hits])
        off.extend(durations[~hits])
        large.extend(durations[hit] for area, score, hit in per_lesion.values() if score > 0.9 and hit.any())
    assert np.mean(on) > 1.3 * np.mean(off)
    assert np.mean([d.sum() for d in large]) > 1000, "cumulative dwell on a conspicuous find above one second"


def test_satisfaction_of_search_hides_a_nodule_beside_a_mass():
    def nodule_found(findings: list[str]) -> float:
        found = []
        for index in range(80):
            case = generate_case("test", index, seed=11, size=SIZE, findings=findings)
            f = case.fixations
            found.append(case.lesions["Nodule"][np.round(f[:, 3]).astype(int), np.round(f[:, 2]).astype(int)].any())
        return float(np.mean(found))

    alone, beside_mass = nodule_found(["Nodule"]), nodule_found(["Mass", "Nodule"])
    assert beside_mass < alone - 0.1, (alone, beside_mass)


def test_dwell_saccades_and_read_time_in_the_stated_ranges():
    p = DEFAULT_PARAMS
    off, every, reads, amplitudes = [], [], [], []
    for _, fixations, per_lesion in _sample():
        durations = fixations[:, 1] - fixations[:, 0]
        every.extend(durations)
        off.extend(durations[~_on_any_lesion(per_lesion, len(fixations))])
        reads.append((fixations[-1, 1] - fixations[0, 0]) / 1000)
        amplitudes.extend(np.hypot(*np.diff(fixations[:, 2:], axis=0).T) / PX_PER_DEG)
    every, off, reads = np.array(every), np.array(off), np.array(reads)
    assert every.min() >= min(p.search_range_ms[0], p.lesion_range_ms[0])
    assert every.max() <= max(p.search_range_ms[1], p.lesion_range_ms[1])
    assert np.mean((off >= 200) & (off <= 400)) > 0.55, "search fixations mostly 200-400 ms"
    assert 230 <= np.median(off) <= 300 and np.mean(off > 500) > 0.01, "with a long tail"
    assert reads.min() >= 2 and reads.max() <= 30 and 6 <= reads.mean() <= 16
    assert 2 <= np.median(amplitudes) <= 8, "saccades of a few degrees"


def test_conspicuity_grows_with_size_and_contrast_and_drops_at_the_apex():
    size = 200
    anatomy = {name: np.zeros((size, size), bool) for name in ANATOMY}
    anatomy["right_lung"][20:180, 10:95] = True
    anatomy["left_lung"][20:180, 105:190] = True
    yy, xx = np.mgrid[:size, :size]

    def score(radius: float, contrast: float, cy: int = 110) -> float:
        disc = np.hypot(xx - 50, yy - cy) <= radius
        image = np.full((size, size), 0.2, np.float32)
        image[disc] += contrast
        return conspicuity(image, anatomy, {"Nodule": disc})["Nodule"]

    assert score(3, 0.2) < score(6, 0.2) < score(12, 0.2)
    assert score(6, 0.05) < score(6, 0.1) < score(6, 0.2)
    assert score(6, 0.2, cy=30) < score(6, 0.2), "apical lesions are harder"
    assert score(40, 0.3) > 0.95 and score(2, 0.02) < 0.05
    hidden = {**anatomy, "heart": (xx >= 50) & (yy >= 60)}  # the heart's border halves the disc
    disc = np.hypot(xx - 50, yy - 110) <= 6
    image = np.where(disc, 0.4, 0.2).astype(np.float32)
    assert conspicuity(image, hidden, {"Nodule": disc})["Nodule"] < 0.8 * score(6, 0.2), "retrocardiac is harder"
    tuned = GazeParams(apical_factor=1.0)
    disc = np.hypot(xx - 50, yy - 30) <= 6
    image = np.where(disc, 0.4, 0.2).astype(np.float32)
    assert conspicuity(image, anatomy, {"Nodule": disc}, tuned)["Nodule"] == pytest.approx(score(6, 0.2), abs=1e-6)


def test_the_split_manifest_records_the_gaze_version(tmp_path):
    out = write_split(tmp_path / "split", "val", 2, size=64, workers=1, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["gaze_version"] == GAZE_VERSION == 3 and manifest["phantom_version"] == PHANTOM_VERSION


@pytest.mark.parametrize("edge", ["bottom", "right"])
def test_lungs_touching_the_film_edge_still_get_a_read(edge):
    case = generate_case("test", 3, seed=11, size=128)
    lungs = case.anatomy["right_lung"] | case.anatomy["left_lung"]
    rows, cols = np.nonzero(lungs)
    shift = (127 - rows.max(), 0) if edge == "bottom" else (0, 127 - cols.max())
    anatomy = {name: np.roll(mask, shift, axis=(0, 1)) for name, mask in case.anatomy.items()}
    lesions = {name: np.roll(mask, shift, axis=(0, 1)) for name, mask in case.lesions.items()}
    fixations = simulate_fixations(np.random.default_rng(0), np.roll(case.image, shift, axis=(0, 1)), anatomy,
                                   lesions, 128)
    assert len(fixations) > 5 and (fixations[:, 2:] >= 0).all() and (fixations[:, 2:] <= 127).all()
