"""Batch work over workers: many files in one `explain`, and the Ray backend of evaluate, annotate-neurons and batch
explain giving the local backend's results (a local Ray with 2 CPUs, started once for the module)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xai_core.cli import explain_inputs, main
from xai_core.errors import InputError
from xai_core.evaluation.runner import run_evaluation
from xai_core.mammi import annotate_neurons
from xai_core.mammi.store import AnnotationStore
from xai_core.phantom import generate_case
from xai_core.workers import BACKENDS, import_ray, ray_init_options, start_workers


@pytest.fixture(scope="module")
def local_ray():
    ray = import_ray(local=True)
    ray.init(**ray_init_options(None, 2))
    yield ray
    ray.shutdown()


def _png(path: Path, index: int) -> Path:
    image = generate_case("test", index, seed=5, size=256).image
    Image.fromarray((image * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "Doe^Jane study"
    (folder / "series 1").mkdir(parents=True)
    _png(folder / "Doe^Jane 1.png", 0)
    _png(folder / "series 1" / "Doe^Jane 2.png", 1)
    (folder / ".hidden.png").write_bytes(b"not looked at")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_explain_inputs_walks_folders_in_a_stable_order(image_folder, tmp_path):
    broken = image_folder / "broken.png"
    broken.write_bytes(b"junk")  # named like an image: explained, so that its error is reported, not hidden
    files = explain_inputs([str(image_folder)])
    assert [f.name for f in files] == ["Doe^Jane 1.png", "broken.png", "Doe^Jane 2.png"]
    assert explain_inputs([str(files[0]), str(image_folder / "series 1")]) == [files[0], files[2]]
    with pytest.raises(InputError, match="no such file"):
        explain_inputs([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no PNG"):
        explain_inputs([str(tmp_path / "empty")])


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_explain_many_files_gives_json_lines_by_position_and_hash(image_folder, tmp_path, capsys):
    (image_folder / "broken.png").write_bytes(b"junk")
    out = tmp_path / "maps"
    code = main(["explain", str(image_folder), "--target", "Effusion", "--methods", "gradcam,nemt", "--json",
                 "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2  # one file failed; the others were explained
    lines = _json_lines(captured.out)
    *results, summary = lines
    assert [r["index"] for r in results] == [0, 1, 2]
    failed = results[1]
    assert failed["error_type"] == "UnsupportedFormatError" and "not a recognised image" in failed["error"]
    for result in (results[0], results[2]):
        assert set(result["methods"]) == {"gradcam", "nemt"} and result["target"] == "Effusion"
        assert {"model", "out_of_domain", "ood_score"} <= set(result)
        assert result["case"].startswith("case-")
        for entry in result["methods"].values():
            assert Path(entry["map"]).parent == out / result["case"] and Path(entry["map"]).is_file()
            assert entry["seconds"] > 0
    assert summary["summary"]["files"] == 3 and summary["summary"]["failed"] == 1
    assert summary["summary"]["startup_seconds"] > 0
    assert "Doe" not in captured.out and "Doe" not in captured.err  # no file or folder name in any output
    assert not any("Doe" in p.name for p in out.rglob("*"))


def test_a_verdict_is_refused_for_a_batch(image_folder, capsys):
    code = main(["explain", str(image_folder), "--target", "Effusion", "--verdict", "agree", "--dicom-out", "x"])
    assert code == 2 and "explain that file alone" in capsys.readouterr().err


def test_unknown_backend_and_an_address_without_ray_are_clear_errors():
    assert BACKENDS == ("local", "ray")
    with pytest.raises(InputError, match="unknown backend"):
        start_workers("dask", 1, print, ())
    with pytest.raises(InputError, match="add --backend ray"):
        start_workers("local", 1, print, (), address="ray://head:10001")


def _table_without_timings(path: Path) -> list[dict]:
    with path.open(newline="") as stream:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(stream)]


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _fail(item):
    raise InputError(f"item {item} is bad")


def test_the_local_ray_listens_on_loopback_only(local_ray):
    assert {node["NodeManagerAddress"] for node in local_ray.nodes()} == {"127.0.0.1"}
    assert local_ray.util.get_node_ip_address() == "127.0.0.1"


def test_a_task_error_on_a_ray_worker_reaches_the_caller(local_ray):
    pool = start_workers("ray", 1, print, ("worker started",))
    try:
        with pytest.raises(InputError, match="item 3 is bad"):
            pool.submit(_fail, 3).result()
    finally:
        pool.shutdown()
    with pytest.raises(InputError, match="one worker needs 64 CPUs"):
        start_workers("ray", 1, print, (), threads=64)


def test_evaluate_on_ray_writes_the_local_backends_results(local_ray, tmp_path):
    options = {"methods": ["gradcam", "random"], "metrics": ["relevance_mass", "pointing_game", "deletion_auc"],
               "seed": 3, "progress": False, "baseline_check_n": 0, "precision": "float32", "workers": 2}
    run_evaluation("demo", "phantom:test", 3, out=tmp_path / "local", **options)
    run_evaluation("demo", "phantom:test", 3, out=tmp_path / "ray", backend="ray", **options)
    local, remote = tmp_path / "local", tmp_path / "ray"
    rows = _table_without_timings(local / "per_image.csv")
    assert rows and rows == _table_without_timings(remote / "per_image.csv")
    summary = json.loads((local / "summary.json").read_text())
    assert _without_timings(summary) == _without_timings(json.loads((remote / "summary.json").read_text()))
    assert (local / "pic_curves.jsonl").read_text() == (remote / "pic_curves.jsonl").read_text()
    assert json.loads((remote / "run.json").read_text())["backend"] == "ray"


def test_annotate_neurons_on_ray_writes_the_local_annotation(local_ray, tmp_path):
    args = ("demo", "output", "demo-clip", "demo", "phantom:train", 40)  # a VLM of fixed weights
    annotate_neurons(*args, tmp_path / "local.sqlite", progress=False)
    annotate_neurons(*args, tmp_path / "ray.sqlite", progress=False, backend="ray", workers=2)
    local, remote = AnnotationStore(tmp_path / "local.sqlite"), AnnotationStore(tmp_path / "ray.sqlite")
    try:
        assert local.neurons() == remote.neurons()
        assert local.meta()["validation"] == remote.meta()["validation"]
    finally:
        local.close()
        remote.close()


def test_batch_explain_on_ray_gives_the_local_results(local_ray, image_folder, tmp_path, capsys):
    common = ["explain", str(image_folder), "--target", "Effusion", "--methods", "gradcam", "--json",
              "--device", "cpu", "--threads", "1"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    local = _json_lines(capsys.readouterr().out)
    assert main([*common, "--out", str(tmp_path / "ray"), "--backend", "ray", "--workers", "2"]) == 0
    remote = _json_lines(capsys.readouterr().out)
    assert remote[-1]["summary"]["backend"] == "ray" and remote[-1]["summary"]["workers"] == 2
    for mine, theirs in zip(local[:-1], remote[:-1], strict=True):
        assert mine["case"] == theirs["case"] and mine["target"] == theirs["target"]
        a = np.load(mine["methods"]["gradcam"]["map"])
        b = np.load(theirs["methods"]["gradcam"]["map"])
        np.testing.assert_array_equal(a, b)
