"""The synthetic radiograph world: determinism, anatomy, lesions where their attributes say, writers."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from xai_core.imaging import load_radiograph
from xai_core.phantom import ANATOMY, FINDINGS, SHORTCUT_LABEL, generate_case
from xai_core.phantom.text import REFLACX_COLUMNS
from xai_core.phantom.writers import read_anatomy_png, write_split


def test_same_seed_same_bytes_and_different_cases():
    a = generate_case("train", 5, seed=3)
    b = generate_case("train", 5, seed=3)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.report == b.report and a.labels == b.labels
    np.testing.assert_array_equal(a.fixations, b.fixations)
    for name in ANATOMY:
        np.testing.assert_array_equal(a.anatomy[name], b.anatomy[name])
    assert generate_case("train", 6, seed=3).image.tobytes() != a.image.tobytes()
    assert generate_case("test", 5, seed=3).image.tobytes() != a.image.tobytes(), "splits use different seeds"


@pytest.mark.parametrize("size", [128, 256, 320])
def test_any_size_and_value_range(size):
    case = generate_case("val", 1, size=size)
    assert case.image.shape == (size, size) and case.image.dtype == np.float32
    assert case.image.min() >= 0.0 and case.image.max() <= 1.0
    for mask in [*case.anatomy.values(), *case.lesions.values()]:
        assert mask.shape == (size, size) and mask.dtype == bool


def test_prevalence_and_no_finding():
    cases = [generate_case("train", i, size=96) for i in range(400)]
    for name in FINDINGS:
        prevalence = np.mean([name in c.labels for c in cases])
        assert 0.08 <= prevalence <= 0.32, (name, prevalence)
    assert any(not c.labels for c in cases) and any(len(c.labels) > 1 for c in cases)


def test_anatomy_is_plausible():
    case = generate_case("test", 0, findings=[])
    image, anatomy = case.image, case.anatomy
    lungs = anatomy["right_lung"] | anatomy["left_lung"]
    assert image[lungs].mean() < image[anatomy["heart"]].mean() - 0.15, "lungs dark, heart bright"
    assert image[anatomy["spine"]].mean() > image[lungs].mean()
    right_cols = np.nonzero(anatomy["right_lung"].any(0))[0]
    left_cols = np.nonzero(anatomy["left_lung"].any(0))[0]
    assert right_cols.mean() < 128 < left_cols.mean(), "patient's right lung is on the image's left (PA)"
    heart_cols = np.nonzero(anatomy["heart"].any(0))[0]
    assert heart_cols.mean() > 128, "the heart lies towards the patient's left"
    for name in ANATOMY:
        assert anatomy[name].sum() > 100, name


def _side_of(mask: np.ndarray, size: int) -> str:
    return "left" if np.nonzero(mask)[1].mean() > size / 2 else "right"


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_finding_mask_lies_where_its_attributes_say(finding):
    for index in range(6):
        case = generate_case("test", index, findings=[finding])
        mask = case.lesions[finding]
        attrs = case.attributes[finding]
        assert case.labels == [finding]
        assert mask.sum() > 10 and attrs["area_px"] == int(mask.sum())
        size = case.image.shape[0]
        if finding == "Cardiomegaly":
            assert attrs["ctr"] > 0.5
            overlap = (mask & case.anatomy["heart"]).sum() / mask.sum()
            assert overlap > 0.95
            continue
        assert _side_of(mask, size) == attrs["side"]
        lung = case.anatomy[f"{attrs['side']}_lung"]
        inside = (mask & lung).sum() / mask.sum()
        assert inside > (0.6 if finding in ("Mass", "Effusion") else 0.8), (finding, inside)
        rows = np.nonzero(lung.any(1))[0]
        centre_row = np.nonzero(mask)[0].mean()
        relative = (centre_row - rows[0]) / (rows[-1] - rows[0])
        if attrs["zone"] == "upper":
            assert relative < 0.45
        elif attrs["zone"] == "lower":
            assert relative > 0.5
        if finding == "Effusion":
            assert relative > 0.6, "effusion is basal"
        if finding in ("Nodule", "Mass", "Consolidation", "Effusion", "Atelectasis"):
            assert case.image[mask].mean() > case.image[lung & ~mask].mean(), "an opacity is denser than lung"
        if finding == "Pneumothorax":
            assert case.image[mask].mean() < case.image[lung & ~mask].mean(), "a pneumothorax is lucent"


def test_nodule_smaller_than_mass():
    nodules = [generate_case("test", i, findings=["Nodule"]).lesions["Nodule"].sum() for i in range(8)]
    masses = [generate_case("test", i, findings=["Mass"]).lesions["Mass"].sum() for i in range(8)]
    assert max(nodules) < min(masses)


def test_atelectasis_raises_the_hemidiaphragm():
    for index in range(4):
        normal = generate_case("test", index, findings=[])
        case = generate_case("test", index, findings=["Atelectasis"])
        side = case.attributes["Atelectasis"]["side"]
        bottom = np.nonzero(case.anatomy[f"{side}_lung"].any(1))[0][-1]
        other = np.nonzero(case.anatomy[f"{'left' if side == 'right' else 'right'}_lung"].any(1))[0][-1]
        assert bottom < other, "the lung with atelectasis ends higher"
        assert case.attributes["Atelectasis"]["diaphragm_raised"]
        assert normal.labels == []


def test_shortcut_tag_correlates_with_its_label():
    cases = [generate_case("train", i, size=96, shortcut=0.9) for i in range(300)]
    positive = [c.shortcut for c in cases if SHORTCUT_LABEL in c.labels]
    negative = [c.shortcut for c in cases if SHORTCUT_LABEL not in c.labels]
    assert np.mean(positive) > 0.85 and np.mean(negative) < 0.15
    tagged = next(c for c in cases if c.shortcut)
    assert tagged.image[4:8, 5:10].mean() > 0.95, "a bright corner tag"
    assert not any(generate_case("train", i, size=96).shortcut for i in range(20)), "off by default"


def test_a_film_without_its_tag_is_the_same_film_elsewhere():
    from xai_core.phantom.generator import TAG_BOX

    for i in range(40):
        tagged = generate_case("test", i, seed=3, size=96, shortcut=0.9)
        untagged = generate_case("test", i, seed=3, size=96, shortcut=0.9, burn_tag=False)
        assert not untagged.shortcut and untagged.meta["tag_withheld"] == tagged.shortcut
        assert "tag_withheld" not in tagged.meta, "the film as always: its meta unchanged"
        assert untagged.labels == tagged.labels and untagged.report == tagged.report
        box = np.zeros((96, 96), bool)
        box[TAG_BOX[0] * 96 // 100:TAG_BOX[2] * 96 // 100, TAG_BOX[1] * 96 // 100:TAG_BOX[3] * 96 // 100] = True
        assert np.array_equal(tagged.image[~box], untagged.image[~box]), "only the tag's pixels differ"
        if tagged.shortcut:
            assert tagged.image[box].min() == np.float32(0.98) and untagged.image[box].max() < 0.98
        else:
            assert np.array_equal(tagged.image, untagged.image)
    assert any(generate_case("test", i, seed=3, size=96, shortcut=0.9).shortcut for i in range(10))


def _rim_contrast(case) -> float:
    """Median lung just inside a pneumothorax minus median of its rim (positive: the rim is darker)."""
    rim = case.lesions[SHORTCUT_LABEL]
    lungs = case.anatomy["right_lung"] | case.anatomy["left_lung"]
    inside = cv2.dilate(rim.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & lungs & ~rim
    return float(np.median(case.image[inside]) - np.median(case.image[rim]))


def test_tag_world_pneumothorax_fades_with_its_visibility():
    tagged = [generate_case("val", i, seed=5, size=128, shortcut=0.0, findings=[SHORTCUT_LABEL]) for i in range(80)]
    untreated = [generate_case("val", i, seed=5, size=128, findings=[SHORTCUT_LABEL]) for i in range(20)]
    visibility = np.array([c.attributes[SHORTCUT_LABEL]["visibility"] for c in tagged])
    assert all("visibility" not in c.attributes[SHORTCUT_LABEL] for c in untreated), "a tag-world attribute only"
    assert 0.12 < np.mean(visibility < 0.05) < 0.35, "u**2: P(v < 0.05) = 0.22"
    assert 0.40 < np.mean(visibility < 0.25) < 0.60, "u**2: P(v < 0.25) = 0.5"
    contrast = np.array([_rim_contrast(c) for c in tagged])
    faint, clear = np.median(contrast[visibility < 0.05]), np.median(contrast[visibility > 0.5])
    full = np.median([_rim_contrast(c) for c in untreated])
    assert abs(faint) < 0.01, "a pneumothorax at visibility ~0 looks like the lung behind it"
    assert 0.03 < clear < full, "half visible or more: darker than the lung, less than without the tag"
    same = generate_case("val", 3, seed=5, size=128, shortcut=0.9, findings=[SHORTCUT_LABEL])
    assert same.attributes[SHORTCUT_LABEL]["visibility"] == tagged[3].attributes[SHORTCUT_LABEL]["visibility"], \
        "visibility is the case's own: the tag strength does not move it"
    assert {k: v for k, v in tagged[3].attributes[SHORTCUT_LABEL].items() if k != "visibility"} == \
        untreated[3].attributes[SHORTCUT_LABEL], "the same lesion, only faded"


def test_reports_mention_findings_and_negations():
    case = generate_case("train", 0, findings=["Effusion", "Nodule"])
    text = case.report.lower()
    assert "effusion" in text and "nodule" in text and "impression:" in text
    assert case.attributes["Effusion"]["side"] in text
    normal = generate_case("train", 1, findings=[])
    assert "impression: no acute cardiopulmonary" in normal.report.lower()
    negations = [generate_case("train", i, findings=[]).report for i in range(10)]
    assert any(" no " in r.lower() or "no pneumothorax" in r.lower() for r in negations)


def test_fixations_cover_lungs_heart_and_dwell_on_lesions():
    case = generate_case("test", 2, findings=["Mass"])
    fixations = case.fixations
    assert fixations.shape[1] == 4 and len(fixations) >= 10
    assert np.all(np.diff(fixations[:, 0]) > 0) and np.all(fixations[:, 1] > fixations[:, 0])
    xs, ys = fixations[:, 2].astype(int), fixations[:, 3].astype(int)
    on_lesion = case.lesions["Mass"][np.clip(ys, 0, 255), np.clip(xs, 0, 255)]
    durations = fixations[:, 1] - fixations[:, 0]
    assert on_lesion.sum() >= 2
    assert durations[on_lesion].mean() > durations[~on_lesion].mean()


def test_writers_round_trip_through_the_loader(tmp_path):
    out = write_split(tmp_path / "split", "val", 12, size=128, png_bits=16, workers=1, progress=False)
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert [r["image"] for r in rows] == [f"val-0-{i:06d}" for i in range(12)]
    reports = list(csv.DictReader((out / "reports.csv").open()))
    attributes = json.loads((out / "attributes.json").read_text())
    for i, row in enumerate(rows):
        case = generate_case("val", i, size=128)
        expected = "|".join(case.labels) or "No Finding"
        assert row["labels"] == expected and reports[i]["report"] == case.report
        png = load_radiograph(out / "images" / f"{row['image']}.png")
        assert png.meta["bits"] == 16
        np.testing.assert_allclose(png.pixels, case.image, atol=1 / 65535 + 1e-6)
        dicom = load_radiograph(out / "dicom" / f"{row['image']}.dcm")
        assert dicom.meta["photometric"] == ("MONOCHROME1" if i % 2 else "MONOCHROME2")
        np.testing.assert_allclose(dicom.pixels, case.image, atol=1 / 4095 + 1e-6)
        assert "PHANTOM" not in json.dumps(dicom.meta) and "SYN-" not in json.dumps(dicom.meta)
        anatomy = read_anatomy_png(out / "anatomy" / f"{row['image']}.png")
        for name in ANATOMY:
            np.testing.assert_array_equal(anatomy[name], case.anatomy[name])
        for finding in case.labels:
            mask = load_radiograph(out / "masks" / f"{row['image']}_{finding}.png").pixels > 0.5
            np.testing.assert_array_equal(mask, case.lesions[finding])
        assert set(attributes[row["image"]]["findings"]) == set(case.labels)
        header = (out / "fixations" / f"{row['image']}.csv").read_text().splitlines()[0].split(",")
        assert tuple(header) == REFLACX_COLUMNS
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["anatomy_bits"] == {name: i for i, name in enumerate(ANATOMY)}


def test_parallel_writer_matches_serial(tmp_path):
    serial = write_split(tmp_path / "a", "train", 16, size=96, workers=1, progress=False)
    parallel = write_split(tmp_path / "b", "train", 16, size=96, workers=2, progress=False)
    assert (serial / "labels.csv").read_text() == (parallel / "labels.csv").read_text()
    for name in ("train-0-000000.png", "train-0-000015.png"):
        assert (serial / "images" / name).read_bytes() == (parallel / "images" / name).read_bytes()
