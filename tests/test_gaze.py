"""Gaze heatmap kernels (the MIMIC paper's and the legacy one) and the REFLACX / MIMIC-EGD fixation readers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from xai_core.errors import InputError, UnknownNameError
from xai_core.evaluation.registry import MapContext
from xai_core.metrics.gaze import (
    DEFAULT_GAZE_KERNEL,
    LEGACY_KERNEL,
    MIMIC_KERNEL,
    NOMINAL_SOURCE_PX,
    gaze_heatmap,
    read_fixations,
    reader_path,
    resolve_gaze_kernel,
)

EGD = """DICOM_ID,FPOGID,X_ORIGINAL,Y_ORIGINAL,FPOGD,Time (in secs)
img-a,1,100.5,200,0.25,0.1
img-b,1,900,800,1.5,0.2
img-a,2,300,400,0.75,0.4
img-b,2,50,60,0.1,0.9
"""
REFLACX = """timestamp_start_fixation,timestamp_end_fixation,x_position,y_position,pupil_area_normalized
0.10,0.40,1200,1500,1.0
0.50,1.50,800,600,1.1
"""


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_egd_reader_keeps_the_images_rows_with_fpogd_durations(tmp_path):
    path = write(tmp_path, "fixations.csv", EGD)
    np.testing.assert_allclose(read_fixations(path, dicom_id="img-a"), [[100.5, 200, 0.25], [300, 400, 0.75]])
    np.testing.assert_allclose(read_fixations(path, dicom_id="img-b"), [[900, 800, 1.5], [50, 60, 0.1]], rtol=1e-6)


def test_egd_reader_needs_an_id_present_in_a_file_of_many_images(tmp_path):
    path = write(tmp_path, "fixations.csv", EGD)
    with pytest.raises(InputError, match="2 images"):
        read_fixations(path)
    with pytest.raises(InputError, match="no fixations of DICOM_ID 'img-c'"):
        read_fixations(path, dicom_id="img-c")


def test_egd_reader_without_fpogd_or_dicom_id(tmp_path):
    one_image = write(tmp_path, "one.csv", "DICOM_ID,X_ORIGINAL,Y_ORIGINAL\nimg-a,10,20\nimg-a,30,40\n")
    np.testing.assert_allclose(read_fixations(one_image), [[10, 20, 1], [30, 40, 1]])  # one image: no id needed
    no_ids = write(tmp_path, "no_ids.csv", "X_ORIGINAL,Y_ORIGINAL,FPOGD\n10,20,0.5\n")
    np.testing.assert_allclose(read_fixations(no_ids, dicom_id="anything"), [[10, 20, 0.5]])


def test_reflacx_reader_durations_are_end_minus_start(tmp_path):
    path = write(tmp_path, "reflacx.csv", REFLACX)
    np.testing.assert_allclose(read_fixations(path, dicom_id="ignored"), [[1200, 1500, 0.3], [800, 600, 1.0]],
                               atol=1e-6)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty file"),
    ("a,b\n1,2\n", "REFLACX"),
    ("DICOM_ID,X_ORIGINAL,Y_ORIGINAL,FPOGD\nimg-a,nan,20,0.5\n", "line 2: X_ORIGINAL is 'nan'"),
    ("DICOM_ID,X_ORIGINAL,Y_ORIGINAL,FPOGD\nimg-a,10,,0.5\n", "line 2: Y_ORIGINAL is ''"),
    ("DICOM_ID,X_ORIGINAL,Y_ORIGINAL,FPOGD\nimg-b,1,2,0.1\nimg-a,10,20,-0.5\n", "line 3: negative"),
    ("timestamp_start_fixation,timestamp_end_fixation,x_position,y_position\n0.5,0.2,10,20\n", "negative"),
    ("timestamp_start_fixation,x_position,y_position\n0.5,10,20\n", "only one of"),
    ("timestamp_start_fixation,timestamp_end_fixation,x_position,y_position\n0.1,0.2,abc,20\n", "x_position"),
])
def test_bad_fixation_files_are_input_errors(tmp_path, text, message):
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(InputError, match=message):
        read_fixations(path, dicom_id="img-a")


def test_a_header_without_rows_has_no_fixations(tmp_path):
    path = write(tmp_path, "none.csv", "x_position,y_position\n")
    assert read_fixations(path).shape == (0, 3)


def test_mimic_preset_scales_source_pixels_to_the_grid():
    assert MIMIC_KERNEL.name == DEFAULT_GAZE_KERNEL and not MIMIC_KERNEL.on_grid
    scale = 224 / 2500
    box, sigma = MIMIC_KERNEL.scaled(224, 2500)
    assert sigma == pytest.approx(MIMIC_KERNEL.sigma * scale) == pytest.approx(13.44)
    assert box == round(MIMIC_KERNEL.box * scale) == 2  # 20 px at 2500 px is 1.8 px at 224
    assert MIMIC_KERNEL.scaled(224, 3000) == (1, pytest.approx(11.2))  # the spec's ~3000 px film
    assert MIMIC_KERNEL.scaled(224) == MIMIC_KERNEL.scaled(224, NOMINAL_SOURCE_PX)
    assert LEGACY_KERNEL.scaled(224, 2500) == (7, 6.0) == LEGACY_KERNEL.scaled(100, 50)  # on the grid as given


def test_mimic_heatmap_sums_to_one_and_peaks_at_the_long_fixation():
    fixations = np.array([[60.0, 60.0, 0.1], [160.0, 150.0, 2.0], [100.0, 40.0, 0.2]])
    heat = gaze_heatmap(fixations, (224, 224), source_px=2500)
    assert heat.sum() == pytest.approx(1.0)
    peak = np.unravel_index(heat.argmax(), heat.shape)
    assert abs(peak[0] - 150) <= 1 and abs(peak[1] - 160) <= 1
    unweighted = gaze_heatmap(fixations, (224, 224), kernel=replace(MIMIC_KERNEL, weighted=False))
    assert unweighted.sum() == pytest.approx(1.0)
    assert gaze_heatmap(np.array([[-5.0, 3.0, 1.0]]), (224, 224)).sum() == 0  # nothing on the image


def _old_heatmap(fixations: np.ndarray, shape: tuple[int, int], sigma: float, box: int = 3) -> np.ndarray:
    """The heatmap as this project built it before the kernels (half-width `box`, duration-weighted)."""
    heat = np.zeros(shape, np.float64)
    h, w = shape
    for x, y, duration in np.asarray(fixations, np.float64).reshape(-1, 3):
        if not (0 <= x < w and 0 <= y < h):
            continue
        xi, yi = int(x), int(y)
        heat[max(0, yi - box):yi + box + 1, max(0, xi - box):xi + box + 1] += duration
    heat = gaussian_filter(heat, sigma)
    total = heat.sum()
    return heat / total if total > 0 else heat


def test_legacy_preset_reproduces_the_old_heatmap_exactly():
    rng = np.random.default_rng(0)
    fixations = np.column_stack([rng.uniform(-10, 234, 40), rng.uniform(-10, 234, 40), rng.uniform(0, 1, 40)])
    fixations[:3, :2] = [[0.2, 0.7], [223.9, 223.5], [1.0, 222.0]]  # boxes cut by the borders
    old = _old_heatmap(fixations, (224, 224), 6.0)
    np.testing.assert_array_equal(gaze_heatmap(fixations, (224, 224), kernel="legacy", source_px=2500), old)
    np.testing.assert_array_equal(gaze_heatmap(fixations, (224, 224), kernel=LEGACY_KERNEL), old)
    np.testing.assert_array_equal(gaze_heatmap(fixations, (224, 224), 6.0), old)  # the earlier call form
    np.testing.assert_array_equal(gaze_heatmap(fixations, (224, 224), sigma=2.5), _old_heatmap(fixations, (224, 224),
                                                                                               2.5))


def test_kernel_resolution_and_overrides():
    assert resolve_gaze_kernel() == MIMIC_KERNEL
    assert resolve_gaze_kernel("legacy") == LEGACY_KERNEL
    assert resolve_gaze_kernel(None, 3.0) == resolve_gaze_kernel(3.0) == replace(LEGACY_KERNEL, sigma=3.0)
    assert resolve_gaze_kernel("mimic", 100.0).sigma == 100.0 and not resolve_gaze_kernel("mimic", 100.0).on_grid
    with pytest.raises(UnknownNameError, match="mimic, legacy"):
        resolve_gaze_kernel("paper")
    with pytest.raises(InputError, match="non-negative"):
        resolve_gaze_kernel("mimic", -1.0)


def test_map_context_uses_the_kernel_and_the_source_size():
    fixations = np.array([[50.0, 50.0, 1.0]], np.float32)
    relevance = np.ones((100, 100), np.float32)
    wide = MapContext(relevance, fixations=fixations, gaze_source_px=500).gaze_heat()
    narrow = MapContext(relevance, fixations=fixations, gaze_source_px=5000).gaze_heat()
    assert wide.max() < narrow.max()  # sigma 150 source px is 30 grid px on a 500 px crop, 3 px on a 5000 px one
    np.testing.assert_array_equal(MapContext(relevance, fixations=fixations, gaze_sigma=3.0).gaze_heat(),
                                  _old_heatmap(fixations, (100, 100), 3.0))


def test_a_folder_reads_the_images_egd_rows_and_carries_the_source_size(tmp_path):
    import cv2

    from xai_core.evaluation import cases_from

    (tmp_path / "images").mkdir()
    (tmp_path / "fixations").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "img-a.png"), np.zeros((100, 140), np.uint8))  # crop: 100 px, x from 20
    (tmp_path / "labels.csv").write_text("image,labels\nimg-a.png,Mass\n")
    (tmp_path / "fixations" / "img-a.csv").write_text(EGD)
    case = next(iter(cases_from(str(tmp_path), 1, 0, 50)))
    assert case.source_px == 100.0
    np.testing.assert_allclose(case.fixations, [[40.25, 100.0, 0.25], [140.0, 200.0, 0.75]])
    (tmp_path / "fixations" / "img-a.csv").write_text(EGD.replace("img-a", "img-z"))
    with pytest.raises(InputError, match="DICOM_ID 'img-a'"):
        next(iter(cases_from(str(tmp_path), 1, 0, 50)))


def test_reader_path_is_the_disc_around_each_fixation():
    path = reader_path(np.array([[10.0, 5.0, 0.3], [60.0, 30.0, 0.1], [500.0, 5.0, 1.0]]), (40, 80), radius=3)
    yy, xx = np.mgrid[:40, :80]
    expected = ((xx - 10) ** 2 + (yy - 5) ** 2 <= 9) | ((xx - 60) ** 2 + (yy - 30) ** 2 <= 9)
    np.testing.assert_array_equal(path, expected)  # the fixation off the grid adds nothing
    assert not reader_path(np.zeros((0, 3)), (8, 8), radius=3).any()
