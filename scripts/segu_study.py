"""What SegU's calibrated certainty knows, from the rows `segu --rows` writes (docs/models.md, issue 25).

    python scripts/segu_study.py results/segu/val3000_gradcam.csv [--test results/segu/test11_gradcam.csv]

On the `val` rows: AUROC on one half of the cases of a calibration fitted on the other half (20 random splits, mean
and standard deviation) for the shipped design, for the pooled fit with per-finding offsets only, and for the
finding's base rate alone. With `--test`: the held-out AUROC (bootstrap 95%) of the certainty fitted on all `val`
rows, of the base rate alone and of the classifier's probability, pooled and within each finding. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from xai_core.certainty import certainties, fit_calibration, score_matrix
from xai_core.segx import SEGU_SCORES, calibrate

SPLITS = 20


def read_rows(path: Path) -> pd.DataFrame:
    """Rows of `segu --rows` with every score defined."""
    rows = pd.read_csv(path)
    return rows[np.isfinite(rows[list(SEGU_SCORES)]).all(axis=1)].reset_index(drop=True)


def _certainty(fit_on: pd.DataFrame, apply_to: pd.DataFrame, **options: int) -> np.ndarray:
    calibration = fit_calibration(score_matrix(fit_on.to_dict("records")), fit_on.correct.to_numpy(bool),
                                  list(fit_on.label), **options)
    return certainties(calibration, list(apply_to.label), score_matrix(apply_to.to_dict("records")))


def _base_rate(fit_on: pd.DataFrame, apply_to: pd.DataFrame) -> np.ndarray:
    rate = fit_on.groupby("label").correct.mean()
    return apply_to.label.map(rate).fillna(fit_on.correct.mean()).to_numpy(float)


def split_study(val: pd.DataFrame, *, splits: int = SPLITS, seed: int = 0) -> dict[str, dict[str, float]]:
    """Half/half splits of the `val` cases: AUROC on the held-back half, per design."""
    designs = {"shipped": lambda a, b: _certainty(a, b),
               "pooled_with_offsets": lambda a, b: _certainty(a, b, min_false=len(a) + 1),
               "base_rate_only": _base_rate}
    scores: dict[str, list[float]] = {name: [] for name in designs}
    rng = np.random.default_rng(seed)
    cases = np.unique(val.case.to_numpy())
    for _ in range(splits):
        half = rng.permutation(cases)[: len(cases) // 2]
        inside = val.case.isin(half).to_numpy()
        fit_on, apply_to = val[inside], val[~inside]
        for name, design in designs.items():
            scores[name].append(float(roc_auc_score(apply_to.correct, design(fit_on, apply_to))))
    return {name: {"mean": float(np.mean(v)), "std": float(np.std(v))} for name, v in scores.items()}


def held_out(val: pd.DataFrame, test: pd.DataFrame, *, seed: int = 11) -> dict[str, Any]:
    """The held-out rows ranked by the certainty (fitted on all `val`), the base rate and the probability."""
    rankings = {"certainty": _certainty(val, test), "base_rate_only": _base_rate(val, test),
                "probability": test.probability.to_numpy(float)}
    correct = test.correct.to_numpy(bool)
    pooled = {}
    for name, values in rankings.items():
        result = calibrate(values, correct, seed=seed)
        pooled[name] = {key: result[key] for key in ("auroc", "ci_low", "ci_high")}
    per_finding: dict[str, dict[str, Any]] = {}
    for label in sorted(test.label.unique()):
        own = (test.label == label).to_numpy()
        entry: dict[str, Any] = {"n_true": int(correct[own].sum()), "n_false": int((~correct[own]).sum())}
        if 0 < entry["n_true"] < own.sum():
            for name in ("certainty", "probability"):
                entry[f"auroc_{name}"] = float(roc_auc_score(correct[own], rankings[name][own]))
        per_finding[label] = entry
    return {"pooled": pooled, "per_finding": per_finding}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("val", type=Path, help="rows of `segu --rows` on phantom:val")
    parser.add_argument("--test", type=Path, default=None, help="rows of `segu --rows` on a held-out seed")
    args = parser.parse_args(argv)
    val = read_rows(args.val)
    out: dict[str, Any] = {"val_splits": split_study(val)}
    if args.test is not None:
        out["held_out"] = held_out(val, read_rows(args.test))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
