"""scripts/segu_study.py on rows written like `segu --rows`: the designs it compares and the held-out rankings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scripts.segu_study import held_out, read_rows, split_study


def rows(seed: int, n_cases: int) -> pd.DataFrame:
    """Cardiomegaly is always right; Nodule is wrong one time in three, and its wrong maps score low."""
    rng = np.random.default_rng(seed)
    out = []
    for case in range(n_cases):
        label = "Cardiomegaly" if case % 2 else "Nodule"
        correct = label == "Cardiomegaly" or rng.random() > 1 / 3
        level = rng.uniform(0.4, 0.9) if correct else rng.uniform(0.0, 0.5)
        out.append({"case": case, "ciou": level, "cauitc": level, "inside_mass": level, "label": label,
                    "correct": correct, "tag": False, "probability": rng.uniform(0.5, 1.0)})
    return pd.DataFrame(out)


def test_split_study_and_held_out_rankings(tmp_path):
    path = tmp_path / "val.csv"
    frame = rows(0, 200)
    frame.loc[0, "ciou"] = np.nan  # an undefined score is left out
    frame.to_csv(path, index=False)
    val = read_rows(path)
    assert len(val) == 199
    study = split_study(val, splits=3)
    assert set(study) == {"shipped", "pooled_with_offsets", "base_rate_only"}
    # the base rate alone only knows the finding; the calibrations also see that wrong Nodule maps score low
    assert 0.6 < study["base_rate_only"]["mean"] < study["shipped"]["mean"]
    result = held_out(val, rows(1, 100))
    assert result["pooled"]["certainty"]["auroc"] > result["pooled"]["base_rate_only"]["auroc"] > 0.6
    assert 0.3 < result["pooled"]["probability"]["auroc"] < 0.7  # a probability drawn at random: chance
    nodule, cardiomegaly = result["per_finding"]["Nodule"], result["per_finding"]["Cardiomegaly"]
    assert nodule["auroc_certainty"] > 0.9 and nodule["n_false"] > 0
    assert cardiomegaly["n_false"] == 0 and "auroc_certainty" not in cardiomegaly
