"""Metrics on hand-made maps with known values; PIC against saliency.metrics.pic; the evaluation runner."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from xai_core.metrics import (
    auitc,
    complexity,
    iou_at,
    pointing_game,
    relevance_mass,
    relevance_rank,
    sparseness,
    summarise,
)
from xai_core.metrics.faithfulness import deletion_insertion, faithfulness_correlation
from xai_core.metrics.gaze import cc, gaze_heatmap, kl_divergence, nss, read_fixations, sim
from xai_core.metrics.pic import PicSkip, bokeh, pic_curve, random_mask, rasterize_linear


def box(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_localisation_known_values():
    mask = box(10, 0, 0, 5)  # 25 px
    a = np.zeros((10, 10))
    a[0, 0], a[9, 9] = 3.0, 1.0
    assert relevance_mass(a, mask)[0] == pytest.approx(0.75)
    assert pointing_game(a, mask)[0] == 1 and pointing_game(a.T[::-1], mask)[0] == 0
    ties = np.zeros((10, 10))
    ties[0, 0] = ties[9, 9] = 1.0
    assert pointing_game(ties, mask)[0] == 1, "any of tied maxima counts"
    ranked = np.where(mask, 2.0, 0.0)
    ranked[9, 9] = 5.0  # one of the top-25 is outside
    assert relevance_rank(ranked, mask)[0] == pytest.approx(24 / 25)
    assert iou_at(np.where(mask, 1.0, 0.0) + np.linspace(0, 1e-6, 100).reshape(10, 10), mask, 25)[0] == 1.0
    assert auitc(np.where(mask, 1.0, 0.0), mask)[0] == pytest.approx(1 - 0.75 * 0.01 / 2)  # t = 0 keeps every pixel
    assert np.isnan(relevance_mass(a, np.zeros((10, 10), bool))[0]), "undefined without ground truth"


def test_shape_metrics_match_their_definitions_on_random_maps():
    rng = np.random.default_rng(0)
    maps = rng.random((5, 16, 16))
    for a, c, s in zip(maps, complexity(maps), sparseness(maps), strict=True):
        p = a.ravel() / a.sum()
        assert c == pytest.approx(-(p * np.log(p)).sum())  # Quantus Complexity: entropy of |a| / sum |a|
        v = np.sort(a.ravel())
        n = v.size
        gini = (np.sum((2 * np.arange(1, n + 1) - n - 1) * v)) / (n * v.sum())  # Quantus Sparseness (Gini)
        assert s == pytest.approx(gini)
    flat, peak = np.ones((1, 8, 8)), np.zeros((1, 8, 8))
    peak[0, 3, 3] = 1
    assert sparseness(flat)[0] == pytest.approx(0) and sparseness(peak)[0] == pytest.approx(1 - 1 / 64)
    assert complexity(peak)[0] == pytest.approx(0) and complexity(flat)[0] == pytest.approx(np.log(64))


def test_bootstrap_summary_is_reproducible():
    values = np.r_[np.random.default_rng(1).normal(0.5, 0.1, 100), np.nan]
    a, b = summarise(values, seed=4), summarise(values, seed=4)
    assert a == b and a["n"] == 100 and a["ci_low"] < a["mean"] < a["ci_high"]


def test_faithfulness_on_a_model_that_reads_one_region():
    region = box(16, 2, 2, 4)
    image = np.ones((16, 16))

    def score(images: np.ndarray) -> np.ndarray:
        return images[:, region].mean(1)

    right = np.where(region, 1.0, 0.0) + 1e-9 * np.arange(256).reshape(16, 16)
    wrong = np.where(region, 0.0, 1.0) + 1e-9 * np.arange(256).reshape(16, 16)
    baseline = np.zeros_like(image)
    good, bad = (deletion_insertion(image, m, score, baseline) for m in (right, wrong))
    assert good["deletion_auc"] < bad["deletion_auc"] and good["insertion_auc"] > bad["insertion_auc"]
    assert faithfulness_correlation(image, right, score, baseline) > 0.9


def test_gaze_scores_and_readers(tmp_path):
    fixations = np.array([[5.0, 5.0, 1.0], [6.0, 5.0, 0.5]])
    heat = gaze_heatmap(fixations, (20, 20), sigma=2)
    assert heat.sum() == pytest.approx(1.0) and np.unravel_index(heat.argmax(), heat.shape)[0] == 5
    assert kl_divergence(heat, heat) == pytest.approx(0, abs=1e-4)  # epsilon-regularised, as in MIT saliency
    assert sim(heat, heat) == pytest.approx(1.0)
    assert cc(heat, heat) == pytest.approx(1.0)
    far = gaze_heatmap(np.array([[15.0, 15.0, 1.0]]), (20, 20), sigma=2)
    assert kl_divergence(heat, far) > 1 and nss(heat, fixations) > nss(far, fixations)
    reflacx = tmp_path / "reflacx.csv"
    reflacx.write_text("timestamp_start_fixation,timestamp_end_fixation,x_position,y_position\n0.1,0.4,10,20\n")
    np.testing.assert_allclose(read_fixations(reflacx), [[10, 20, 0.3]], atol=1e-6)
    egd = tmp_path / "egd.csv"
    egd.write_text("DICOM_ID,X_ORIGINAL,Y_ORIGINAL\nx,100,200\n")
    np.testing.assert_allclose(read_fixations(egd), [[100, 200, 1]])
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="REFLACX"):
        read_fixations(bad)


@pytest.fixture
def reference_pic(monkeypatch):
    from saliency.metrics import pic

    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # saliency 0.2.1 calls np.trapz (NumPy < 2)
    return pic


def test_pic_agrees_with_saliency_metrics_pic(reference_pic):
    from xai_core.phantom import generate_case

    case = generate_case("test", 3, size=96)
    image = (np.clip(case.image, 0, 1) * 255).round().astype(np.uint8)
    yy, xx = np.mgrid[:96, :96]
    weights = np.exp(-((yy - 40) ** 2 + (xx - 55) ** 2) / 300.0)
    template = image.astype(np.float64) * weights

    def predict(images: np.ndarray) -> np.ndarray:  # a 'model' that needs the detail where the map points
        images = np.asarray(images, np.float64)
        detail = np.abs(images - np.stack([bokeh(i.astype(np.uint8), random_mask((96, 96))) for i in images]))
        return 1 - np.exp(-(detail * weights).sum((1, 2)) / 500.0)

    thresholds = [0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75]
    mask = random_mask((96, 96), 0.01, seed=0)
    for saliency_map in (weights + 1e-6 * template, np.random.default_rng(0).random((96, 96))):
        ours = pic_curve(image, saliency_map, predict, mask, min_score=0.0)
        theirs = reference_pic.compute_pic_metric(image, saliency_map, mask, predict, thresholds, min_pred_value=0.0)
        assert abs(ours.auc - theirs.auc) < 0.02


@pytest.mark.parametrize("kept_fraction", [0.02, 0.5, 0.9])
def test_rasterized_interpolation_equals_scipy(kept_fraction):
    from scipy.interpolate import LinearNDInterpolator
    from scipy.spatial import Delaunay

    rng = np.random.default_rng(1)
    keep = rng.random((64, 80)) < kept_fraction
    points = np.argwhere(keep) + rng.uniform(-1e-3, 1e-3, (keep.sum(), 2))
    values = rng.random(len(points)) * 255
    triangulation = Delaunay(points)
    ours = rasterize_linear(points, triangulation.simplices, values, ~keep, fill=-1.0)
    unknown = np.argwhere(~keep)
    theirs = LinearNDInterpolator(triangulation, values, fill_value=-1.0)(unknown)
    np.testing.assert_allclose(ours[tuple(unknown.T)], theirs, atol=1e-9)
    assert (ours[keep] == -1.0).all()  # only the wanted pixels are written
    assert (theirs == -1.0).any()  # some removed pixels lie outside the hull and keep the fill


@pytest.mark.parametrize("kind", ["sparse", "scattered", "blobs"])
def test_bokeh_rebuilds_a_linear_ramp_everywhere_including_the_image_edge(kind):
    from scipy.ndimage import gaussian_filter

    from xai_core.metrics import pic

    rows, cols = np.mgrid[:224, :224]
    ramp = np.round(10 + 0.5 * rows + 0.4 * cols).astype(np.uint8)  # linear interpolation reproduces it exactly
    rng = np.random.default_rng(3)
    keep = {"sparse": rng.random((224, 224)) < 0.01,  # few points: qhull
            "scattered": rng.random((224, 224)) < 0.5,  # tens of thousands of points: OpenCV
            "blobs": gaussian_filter(rng.random((224, 224)), 8) > 0.5}[kind]
    keep[0, 20:200] = False  # removed pixels on the image edge lie on the hull, not outside it
    rebuilt = pic.bokeh(ramp, keep)
    assert np.abs(rebuilt.astype(int) - ramp).max() <= 1
    if kind == "scattered":
        with_corners = keep.copy()
        with_corners[[0, 0, -1, -1], [0, -1, 0, -1]] = True  # bokeh always keeps the corners
        pixels = np.argwhere(with_corners)
        assert pic._grid_delaunay(pixels, (224, 224)) is not None, "the OpenCV path is the one under test"
        inner = pixels[(pixels > 0).all(1) & (pixels < 223).all(1)]
        assert pic._grid_delaunay(inner, (224, 224)) is None, "triangles that miss part of the image are refused"


def test_pic_gives_the_same_curve_on_one_thread_and_on_several():
    from xai_core.metrics import pic
    from xai_core.phantom import generate_case

    image = (np.clip(generate_case("test", 5, size=96).image, 0, 1) * 255).round().astype(np.uint8)
    relevance = np.random.default_rng(4).random((96, 96))
    mask = random_mask((96, 96), 0.01, seed=2)

    def predict(images: np.ndarray) -> np.ndarray:
        return np.exp(-np.abs(np.asarray(images, np.float64) - image).mean((1, 2)) / 6.0)

    before = pic.threads()
    try:
        curves = {}
        for threads in (1, 3):
            pic.set_threads(threads)
            assert pic.threads() == threads
            curves[threads] = pic_curve(image, relevance, predict, mask)
    finally:
        pic.set_threads(before)
    np.testing.assert_array_equal(curves[1].curve_y, curves[3].curve_y)
    assert 0 < curves[1].auc < 1


def test_pic_skip_rules():
    image = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    relevance = np.random.default_rng(1).random((32, 32))
    with pytest.raises(PicSkip, match="original score"):
        pic_curve(image, relevance, lambda imgs: np.full(len(imgs), 0.2), random_mask((32, 32)))
    with pytest.raises(PicSkip, match="blurred score"):
        pic_curve(image, relevance, lambda imgs: np.full(len(imgs), 0.9), random_mask((32, 32)))


def test_sic_and_aic_from_shared_bokeh_images_equal_two_separate_curves():
    from xai_core.metrics.pic import sic_aic
    from xai_core.phantom import generate_case

    case = generate_case("test", 3, size=64)
    image = (np.clip(case.image, 0, 1) * 255).round().astype(np.uint8)
    calls = []

    def predict(images: np.ndarray) -> np.ndarray:  # 1 for the original, falling with the distance from it
        calls.append(len(images))
        return np.exp(-np.abs(np.asarray(images, np.float64) - image).mean((1, 2)) / 6.0)

    mask = random_mask((64, 64), 0.01, seed=1)
    relevance = np.random.default_rng(2).random((64, 64))
    sic = pic_curve(image, relevance, predict, mask)
    aic = pic_curve(image, relevance, lambda imgs: (predict(imgs) >= 0.3).astype(float), mask)
    separate = sum(calls)
    calls.clear()
    cache: dict = {}
    both = sic_aic(image, relevance, predict, mask, 0.3, cache=cache)
    assert both["sic"].auc == pytest.approx(sic.auc) and both["aic"].auc == pytest.approx(aic.auc)
    assert 0 < both["aic"].auc < 1 and sum(calls) == separate // 2
    assert len(cache) == 15  # blurred, original and one bokeh image per threshold, kept for the next map
    again = sic_aic(image, relevance, predict, mask, 0.3, cache=cache)
    assert again["sic"].auc == both["sic"].auc and len(cache) == 15
    skipped = sic_aic(image, relevance, predict, mask, 1.5)  # never predicted: AIC skipped
    assert isinstance(skipped["aic"], PicSkip) and skipped["sic"].auc == pytest.approx(sic.auc)


def test_case_memo_sends_each_distinct_image_through_the_model_once():
    from xai_core.evaluation.runner import CaseMemo
    from xai_core.models import load_model

    handle = load_model("demo")
    memo = CaseMemo(handle, "float32")
    images = np.random.default_rng(0).random((3, 224, 224)).astype(np.float32)  # pixels in [0, 1]
    first = memo.probabilities(images[[0, 1, 0]])
    assert memo.model_images == 2 and np.array_equal(first[0], first[2])
    assert handle.card.input.value_range == (-1024.0, 1024.0)  # the memo scales pixels to the card's range
    with torch.inference_mode():
        direct = torch.sigmoid(handle.module(torch.from_numpy(images * 2048 - 1024).unsqueeze(1))).numpy()
    np.testing.assert_allclose(memo.probabilities(images), direct, atol=1e-5)
    assert memo.model_images == 3
    np.testing.assert_allclose(memo.for_target(2)(images[2:]), direct[2:, 2], atol=1e-5)
    fast = CaseMemo(handle, "auto")
    if fast.bfloat16:  # where bfloat16 scoring is the default, it stays close to float32
        np.testing.assert_allclose(fast.probabilities(images), direct, atol=0.01)


def test_evaluate_runner_end_to_end_and_resume(tmp_path):
    from xai_core.evaluation import resolve_metrics, run_evaluation

    metrics = resolve_metrics("localisation,shape,gaze,deletion_auc")
    out = tmp_path / "eval"
    summary = run_evaluation("demo", "phantom:test", 4, ["gradcam", "random"], metrics, out, progress=False)
    rows = (out / "per_image.csv").read_text().splitlines()
    assert len(rows) > 1 and set(summary) == {"gradcam", "random"}
    stored = json.loads((out / "summary.json").read_text())
    for method in ("gradcam", "random"):
        cell = stored[method]["relevance_mass"]
        assert set(cell) == {"mean", "ci_low", "ci_high", "n"} and cell["n"] > 0
    assert (out / "metrics.html").is_file() and (out / "metrics.png").stat().st_size > 1000
    again = run_evaluation("demo", "phantom:test", 4, ["gradcam", "random"], metrics, out, progress=False)
    assert (out / "per_image.csv").read_text().splitlines() == rows, "a finished run resumes without new rows"
    assert again == summary
    with pytest.raises(KeyError, match="unknown metric"):
        resolve_metrics("nope")


def _process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process from Linux's /proc (the platform of CI and our machines), or None when
    it is gone."""
    from pathlib import Path

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    state = _process_state(pid)
    return state is not None and state[0] != "Z"


def _worker_children(parent: int) -> list[int]:
    """Live processes started by `parent` that run a multiprocessing worker."""
    from pathlib import Path

    found = []
    for folder in Path("/proc").glob("[0-9]*"):
        state = _process_state(int(folder.name))
        try:
            is_worker = b"multiprocessing.spawn" in (folder / "cmdline").read_bytes()
        except OSError:
            continue
        if state is not None and state[1] == parent and state[0] != "Z" and is_worker:
            found.append(int(folder.name))
    return found


def test_evaluate_workers_exit_when_the_evaluate_process_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    command = [sys.executable, "-m", "xai_core", "evaluate", "--model", "demo", "--data", "phantom:test", "--n", "60",
               "--methods", "gradcam", "--metrics", "relevance_mass", "--workers", "2", "--out", str(tmp_path / "out")]
    run = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(workers := _worker_children(run.pid)) < 2:
            assert run.poll() is None and time.monotonic() < deadline, "the workers never started"
            time.sleep(0.2)
    finally:
        run.send_signal(signal.SIGTERM)  # no cleanup in the parent: its workers must notice on their own
        run.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers), "worker processes outlived the evaluate process"


def test_evaluate_over_worker_processes_gives_the_same_rows(tmp_path):
    from xai_core.evaluation import resolve_metrics, run_evaluation

    metrics = resolve_metrics("relevance_mass,deletion_auc,pic")
    for workers in (1, 2):
        run_evaluation("demo", "phantom:test", 3, ["gradcam", "random"], metrics, tmp_path / str(workers),
                       progress=False, workers=workers)

    def table(folder: str) -> list[dict[str, str]]:
        with (tmp_path / folder / "per_image.csv").open(newline="") as handle:
            return list(csv.DictReader(handle))

    one, two = table("1"), table("2")
    assert len(one) > 3
    labels = ["case_id", "finding", "method", "sic_skip", "aic_skip"]  # the PIC outcome: kept or the skip rule
    assert [[row[k] for k in labels] for row in one] == [[row[k] for k in labels] for row in two]
    # the same numbers up to float rounding: torch's convolutions sum in an order that depends on its thread count
    # (2 threads in one process, 1 in each of two)
    np.testing.assert_allclose(np.array([[row[m] for m in metrics] for row in one], float),
                               np.array([[row[m] for m in metrics] for row in two], float), rtol=1e-6, atol=1e-9)


def test_default_workers_one_per_core_on_cpu_only_for_runs_worth_the_start_up(monkeypatch):
    import os

    from xai_core.evaluation.runner import MIN_CASES_PER_EXTRA_WORKER, default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
    assert default_workers("cpu", 200) == 8, "one per core, at most 8"
    assert default_workers("cpu", MIN_CASES_PER_EXTRA_WORKER - 1) == 1
    assert default_workers("cuda", 200) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_workers("cpu", MIN_CASES_PER_EXTRA_WORKER) == 2


def test_pic_median_curves_from_stored_per_image_curves(tmp_path):
    from xai_core.evaluation.reports import CURVE_SAMPLES, median_curves, write_curve_plots

    x = np.linspace(0, 1, CURVE_SAMPLES)
    lines = [{"case_id": f"c{i}", "finding": "Mass", "method": "gradcam", "kind": "sic", "y": list(x ** power)}
             for i, power in enumerate((1.0, 2.0, 3.0))]
    lines.append({**lines[0], "y": list(x ** 0.5)})  # a resumed run rewrote c0: the last record counts
    curve_file = tmp_path / "pic_curves.jsonl"
    curve_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    curves = median_curves(curve_file, ["gradcam", "random"])
    sic = curves["gradcam"]["sic"]
    assert sic["n"] == 3 and set(curves) == {"gradcam"}  # no curves for random, no aic
    np.testing.assert_allclose(sic["y"], x ** 2, atol=1e-4)  # pointwise median of x^0.5, x^2, x^3
    assert sic["median_curve_auc"] == pytest.approx(1 / 3, abs=1e-3)
    assert sic["ci_low"] <= sic["median_curve_auc"] <= sic["ci_high"]
    write_curve_plots(curves, tmp_path)
    assert (tmp_path / "pic_curves.html").is_file() and (tmp_path / "pic_curves.png").stat().st_size > 1000


def test_evaluate_workers_cap_the_blas_pools_of_numpy_and_scipy():
    from threadpoolctl import threadpool_info, threadpool_limits

    from xai_core.evaluation.runner import limit_blas_threads

    before = {i["prefix"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    try:
        limit_blas_threads(1)
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert any("scipy" in i["filepath"] for i in blas)  # scipy's own BLAS was loaded before the cap
        assert all(i["num_threads"] == 1 for i in blas)
    finally:
        threadpool_limits(limits=before)


def test_pic_webp_size_is_the_references_information_estimate(reference_pic):
    """The information proxy is the reference's, byte for byte: lossless WebP at its quality (compression effort)
    100, on the original and on bokeh images of a blob-shaped and a scattered map."""
    from xai_core.metrics import pic
    from xai_core.phantom import generate_case

    case = generate_case("test", 3, size=224)
    image = (np.clip(case.image, 0, 1) * 255).round().astype(np.uint8)
    mask = random_mask((224, 224), 0.01, seed=0)
    yy, xx = np.mgrid[:224, :224]
    maps = (np.exp(-((yy - 90) ** 2 + (xx - 130) ** 2) / 1500.0), np.random.default_rng(0).random((224, 224)))
    images = [image, bokeh(image, mask)]
    images += [bokeh(image, (m >= np.quantile(m, 1 - t)) | mask) for m in maps for t in (0.02, 0.21)]
    for rebuilt in images:
        assert pic.webp_size(rebuilt) == reference_pic.estimate_image_entropy(rebuilt)


def test_workers_never_run_the_parents_main_script(tmp_path, monkeypatch):
    """Under Streamlit the page script is `__main__`: spawned evaluate workers must not run it."""
    import sys
    import types

    from xai_core.evaluation import resolve_metrics, run_evaluation

    marker = tmp_path / "main-ran"
    script = tmp_path / "page.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    page = types.ModuleType("__main__")
    page.__file__ = str(script)
    page.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", page)
    run_evaluation("demo", "phantom:test", 2, ["random"], resolve_metrics("relevance_mass"), tmp_path / "out",
                   progress=False, workers=2)
    assert not marker.exists(), "a worker ran the parent's main script"
    assert page.__file__ == str(script) and page.__spec__ is None, "the main module is restored"
    assert (tmp_path / "out" / "per_image.csv").read_text().count("\n") > 1
