"""`python -m xai_core ...`: the command-line contract."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import ROOT
from xai_core.cli import main
from xai_core.models import get_card

MODEL = "xrv-densenet121-nih"


def test_predict_json_end_to_end(monochrome1_dicom):
    path = monochrome1_dicom
    result = subprocess.run(
        [sys.executable, "-m", "xai_core", "predict", str(path), "--model", MODEL, "--allow-random-weights",
         "--json", "--device", "cpu"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == MODEL and data["random_weights"] is True
    assert len(data["sha256"]) == 64
    assert {"label", "probability", "threshold", "positive", "logit"} <= set(data["findings"][0])
    assert data["image"]["meta"]["photometric"] == "MONOCHROME1"
    assert "SYNTHETIC" not in result.stdout


def test_predict_table(sample_png, capsys):
    code = main(["predict", str(sample_png), "--model", MODEL,
                 "--allow-random-weights", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "random weights" in out and "Cardiomegaly" in out and "probability" in out


def test_bad_file_exits_2_with_a_message_and_no_traceback(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    assert main(["predict", str(bad), "--model", MODEL, "--allow-random-weights"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and "DICOM" in err


def test_unknown_model_and_missing_weights_exit_2(sample_png, tmp_path, capsys, monkeypatch):
    image = str(sample_png)
    assert main(["predict", image, "--model", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err
    monkeypatch.setenv("XAI_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("XRV_DATA_DIR", str(tmp_path))
    assert main(["predict", image, "--model", MODEL]) == 2
    assert "XAI_WEIGHTS_DIR" in capsys.readouterr().err


def test_models_lists_cards(capsys):
    assert main(["models", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert cards[MODEL]["input"] == {"channels": 1, "size": 224, "value_range": [-1024.0, 1024.0]}


def test_explain_writes_maps_overlays_and_json(tmp_path, capsys):
    import numpy as np

    sample = ROOT / "assets" / "samples" / "dicom" / "samples-0-000004.dcm"  # a Mass case
    code = main(["explain", str(sample), "--target", "Mass", "--methods", "gradcam,random", "--out",
                 str(tmp_path), "--json", "--device", "cpu"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "demo" and data["target"] == "Mass"
    assert set(data["methods"]) == {"gradcam", "random"}
    for method, entry in data["methods"].items():
        assert entry["seconds"] >= 0
        values = np.load(entry["map"])
        assert values.shape == (224, 224) and values.dtype == np.float32 and (values >= 0).all()
        assert (tmp_path / f"{method}_overlay.png").stat().st_size > 1000
    assert main(["explain", str(sample), "--target", "Mass", "--methods", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_explain_with_segx_adds_refined_maps_and_certainty(tmp_path, capsys, demo_nemt_decoder):
    import numpy as np

    sample = ROOT / "assets" / "samples" / "dicom" / "samples-0-000001.dcm"  # a Cardiomegaly case
    code = main(["explain", str(sample), "--target", "Cardiomegaly", "--methods", "gradcam,nemt", "--out",
                 str(tmp_path), "--json", "--segx", "--device", "cpu"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    for entry in data["methods"].values():
        refined = np.load(entry["segx"]["map"])
        assert refined.shape == (224, 224) and refined.min() >= 0 and refined.max() <= 1
        segu = entry["segu"]
        assert segu["region"] == ["heart"] and not segu["fallback_region"]
        assert segu["segmenter"] == "demo-anatomy" and segu["region_kind"] == "anatomy"
        assert 0 <= segu["cauitc"] <= 1 and 0 <= segu["inside_mass"] <= 1
        # the probability that the finding is right exists only where a calibration for these regions does
        assert (segu["certainty"] is not None) == segu["calibrated"]


def test_segu_calibration_command(tmp_path, monkeypatch, capsys):
    from xai_core.models.bundled import MANIFEST

    monkeypatch.setenv("XAI_DATA_DIR", str(tmp_path))
    committed = MANIFEST.read_bytes()
    rows_csv = tmp_path / "rows" / "val.csv"
    code = main(["segu", "--model", "demo", "--data", "phantom:val", "--n", "24", "--method", "gradcam",
                 "--calibrate", "--rows", str(rows_csv), "--json", "--device", "cpu"])
    out = capsys.readouterr()
    rows = pd.read_csv(rows_csv)
    assert {"case", "ciou", "cauitc", "inside_mass", "label", "correct", "tag", "probability"} <= set(rows.columns)
    assert rows.case.between(0, 23).all() and rows.probability.between(0, 1).all() and not rows.tag.any()
    if code != 0:
        assert "both true and false positives" in out.err  # 24 cases may hold no false positive: said clearly
        return
    data = json.loads(out.out)
    assert data["n_positive_findings"] == len(rows) > 0 and 0 <= data["calibration"]["auroc"] <= 1
    scored = rows[rows[["ciou", "cauitc", "inside_mass"]].notna().all(axis=1)]  # an undefined score is left out
    assert data["calibration"]["n_false"] == int((~scored.correct).sum())
    assert {"ci_low", "ci_high", "n_true", "n_false"} <= set(data["calibration"]) and data["calibration"]["in_sample"]
    assert {"per_label", "within_label_auroc"} <= set(data["by_label"]) and set(data["scores"]) == {
        "ciou", "cauitc", "inside_mass"}
    assert set(data["table4"]["gradcam"]) == {"correct", "incorrect"}
    assert data["table4"]["gradcam"]["correct"]["n"] == data["calibration"]["n_true"]
    small = [label for label, e in data["per_finding_calibration"].items() if e["n_false"] < 10 or e["n_true"] < 10]
    assert data["fallback_labels"] == small and len(data["notes"]) == len(small), "the pooled fallback is said"
    stored = json.loads((tmp_path / "segu-calibrations.json").read_text())["models"]["demo"]["gradcam"]
    entry = stored[data["segmenter"]]
    assert entry["figures"]["calibration"]["auroc"] == data["calibration"]["auroc"]
    assert (entry["data"], entry["seed"], entry["n_cases"]) == ("phantom:val", 0, 24)
    assert MANIFEST.read_bytes() == committed, "run-time results never go into the committed weights manifest"
    code = main(["segu", "--model", "demo", "--data", "phantom:test", "--n", "12", "--json", "--device", "cpu"])
    out = capsys.readouterr()
    if code == 0:  # the stored calibration applied to held-out cases
        applied = json.loads(out.out)["calibration"]
        assert not applied["in_sample"] and applied["file"] == str(tmp_path / "segu-calibrations.json")
    else:
        assert "both true and false positives" in out.err
    assert main(["segu", "--data", "folder:x"]) == 2


def test_logins_and_store_backup_from_the_command_line(tmp_path, monkeypatch, capsys):
    from xai_core import auth
    from xai_core.store import CaseStore

    users = tmp_path / "users.json"
    answers = iter(["s3cret-pass", "s3cret-pass", "one", "two"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert main(["add-user", "ada", "--role", "researcher", "--name", "Ada L", "--users-file", str(users)]) == 0
    assert auth.authenticate(auth.load_users(users), "ada", "s3cret-pass").role == "researcher"
    assert "s3cret-pass" not in users.read_text(), "only a salted hash is kept"
    assert main(["add-user", "bob", "--users-file", str(users)]) == 2  # the two passwords differ
    assert "differ" in capsys.readouterr().err
    assert main(["list-users", "--users-file", str(users), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"username": "ada", "role": "researcher", "name": "Ada L"}]
    assert main(["remove-user", "ada", "--users-file", str(users)]) == 0
    assert main(["remove-user", "ada", "--users-file", str(users)]) == 2

    store = tmp_path / "cases.sqlite"
    CaseStore(store)
    capsys.readouterr()
    assert main(["store-check", "--store", str(tmp_path / "missing.sqlite")]) == 2
    assert not (tmp_path / "missing.sqlite").exists(), "checking never creates a store"
    assert main(["store-check", "--store", str(store)]) == 0
    assert json.loads(capsys.readouterr().out)["integrity"] == "ok"
    copy = tmp_path / "backup.sqlite"
    assert main(["store-backup", str(copy), "--store", str(store)]) == 0
    assert CaseStore(copy).status()["integrity"] == "ok"
    assert main(["store-backup", str(copy), "--store", str(store)]) == 2  # no silent overwrite
    assert "error:" in capsys.readouterr().err


def test_check_baselines_prints_a_table_or_strict_json_and_exits_1_when_a_baseline_reads_positive(capsys):
    assert main(["check-baselines", "--model", "demo", "--n", "12", "--json", "--device", "cpu"]) in (0, 1)
    out = capsys.readouterr().out
    check = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in strict JSON"))
    assert check["model"] == "demo" and check["data"]["indices"] == [0, 12]
    assert {"mean", "blur", "road", "zero", "constant_-600"} <= set(check["recipes"])
    assert check["passes"] == all(entry["passes"] for entry in check["recipes"].values())
    code = main(["check-baselines", "--model", "demo", "--n", "12", "--device", "cpu"])
    table = capsys.readouterr().out
    assert code == (0 if check["passes"] else 1), "exit 1 exactly when a baseline reads as positive"
    for name, entry in check["recipes"].items():
        row = next(line for line in table.splitlines() if line.startswith(name + " "))
        assert ("READS POSITIVE" in row) == (not entry["passes"])
        assert all(finding in row for finding in entry["reads_positive"])
    assert main(["check-baselines", "--model", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["check-baselines", "--n", "0"]) == 2


def test_evaluate_defaults_to_every_metric_and_prints_and_stores_per_finding_tables(tmp_path, capsys):
    from xai_core.cli import build_parser
    from xai_core.evaluation import resolve_metrics

    assert {"complexity", "sparseness"} <= set(resolve_metrics(build_parser().parse_args(["evaluate"]).metrics))
    out = tmp_path / "eval"
    assert main(["evaluate", "--n", "1", "--methods", "gradcam", "--metrics", "shape,pic", "--out", str(out),
                 "--device", "cpu", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "complexity" in printed and "sparseness" in printed and "per finding" in printed
    assert "PIC coverage, SIC" in printed and "blurred_as_high" in printed

    def strict(path):
        return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in {path.name}"))

    summary, run = strict(out / "summary.json"), strict(out / "run.json")
    assert run["summary"] == {k: v for k, v in summary.items() if k not in ("by_finding", "pic_coverage")}
    with (out / "per_image.csv").open(newline="") as table:
        rows = list(csv.DictReader(table))
    findings = {row["finding"] for row in rows}
    assert set(summary["by_finding"]["gradcam"]) == findings
    for cells in [summary["gradcam"], *summary["by_finding"]["gradcam"].values()]:
        assert all((cell["mean"] is None) == (cell["n"] == 0) for cell in cells.values()), "null, never NaN"
    for kind in ("sic", "aic"):
        for finding, counts in summary["pic_coverage"][kind]["by_finding"].items():
            outcomes = [row[f"{kind}_skip"] for row in rows if row["finding"] == finding]
            assert counts["positives"] == len(outcomes) == sum(v for k, v in counts.items() if k != "positives")
            assert all(counts[outcome] == outcomes.count(outcome) for outcome in set(outcomes))


def test_evaluate_names_the_removal_method_and_its_baseline_check(tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--n", "1", "--methods", "gradcam", "--metrics", "deletion_auc", "--out", str(out),
                 "--device", "cpu", "--workers", "1", "--removal", "blur", "--baseline-check-n", "3"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["removal"].startswith("blur")
    assert run["baseline_check"]["recipe"] == "blur" and run["baseline_check"]["data"]["indices"] == [0, 3]
    assert set(run["baseline_check"]["pushed"]) == set(get_card("demo").labels)
    with pytest.raises(SystemExit) as refused:
        main(["evaluate", "--n", "1", "--out", str(tmp_path / "bad"), "--removal", "paint"])
    assert refused.value.code == 2 and not (tmp_path / "bad").exists()


def test_train_mimic_explanation_option_reaches_the_recipe(monkeypatch):
    from xai_core import cli
    from xai_core.cli import build_parser

    recipes = []
    monkeypatch.setattr(cli, "train_mimic", lambda recipe, **_: recipes.append(recipe) or
                        {"file": "x.pt", "sha256": "0", "train_seconds": 0.0, "metrics": {}})
    assert cli.main(["train", "mimic", "--explanation", "hirescam", "--steps", "1"]) == 0
    assert recipes[0].explanation == "hirescam" and recipes[0].variant == "gaze"
    assert build_parser().parse_args(["train", "mimic"]).explanation == "gradcam"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "mimic", "--explanation", "xrai"])


def test_segu_reads_what_drove_a_shortcut_call_from_the_film_without_its_tag(tmp_path, capsys):
    from xai_core.engine import Engine
    from xai_core.phantom import SHORTCUT_LABEL, generate_case
    from xai_core.radiograph import Radiograph

    rows_csv = tmp_path / "rows.csv"
    code = main(["segu", "--model", "demo-shortcut", "--data", "phantom:test", "--n", "16", "--seed", "11",
                 "--shortcut", "0", "--method", "gradcam", "--rows", str(rows_csv), "--json", "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    figures = json.loads(out.out)["shortcut"]
    rows = pd.read_csv(rows_csv)
    called = rows[(rows.label == SHORTCUT_LABEL) & rows.tag]
    assert len(called) > 0 and called.without_tag.notna().all(), "every tagged call is checked without its tag"
    assert rows[~((rows.label == SHORTCUT_LABEL) & rows.tag)].get("without_tag", pd.Series(dtype=object)).isna().all()
    engine = Engine("cpu")
    row = called.iloc[0]
    film = generate_case("test", int(row.case), seed=11, size=256, shortcut=0, burn_tag=False).image
    prediction = engine.predict(Radiograph.from_array(film, source_name="untagged"), "demo-shortcut")
    labels = list(engine.model("demo-shortcut").card.labels)
    assert bool(prediction.positive[labels.index(SHORTCUT_LABEL)]) == bool(row.without_tag)
    pneumothorax = rows[rows.label == SHORTCUT_LABEL]
    stands = ~pneumothorax.tag | (pneumothorax.without_tag == True)  # noqa: E712 (a column of objects)
    assert figures["n_lesion_driven"] == int((pneumothorax.correct & stands).sum())
    assert figures["n_tag_driven"] == int((~pneumothorax.correct & pneumothorax.tag & ~stands).sum())
    assert figures["by_presence"]["n_true"] == int(pneumothorax.correct.sum())
