"""The out-of-domain guard: does an input resemble the images a model was trained on?

Per model, a Gaussian is fitted (mean + Ledoit-Wolf shrinkage covariance) to the classifier's pooled features (the
input of its linear head, `DenseNetLogits.pooled`) of phantom `train` cases of a data seed the model trained on. An
image's score is its Mahalanobis distance to that Gaussian; it is out of domain above a threshold set on phantom
`val` (its own seed) so that about `VAL_FALSE_ALARM` of val cases exceed it. Phantom cases are made at 256 px and go
through the engine's preprocessing (`preprocess`), so the score sees exactly the model's input.

Statistics live in `assets/models/ood.json` (shipped with the bundled models, made by `python -m xai_core ood --fit`)
and `$XAI_DATA_DIR/ood.json` (read first), keyed by model name and checked against the weights' sha256: statistics
made for other weights are refused. A model without statistics is "not checked", never "in domain".
"""

from __future__ import annotations

import base64
import json
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
from sklearn.covariance import LedoitWolf

from xai_core.errors import InputError
from xai_core.files import data_dir, finite_json, update_json
from xai_core.imaging import Radiograph, load_radiograph
from xai_core.models import bundled
from xai_core.models.base import ModelHandle, preprocess
from xai_core.phantom import generate_case

FILE_NAME = "ood.json"
FORMAT_VERSION = 1
FIT_N = 2000  # phantom train cases the Gaussian is fitted on
VAL_N = 1000  # phantom val cases the threshold is set on
TEST_N = 1000  # phantom test cases of the false-alarm figure
TEST_SEED = 11  # the held-out report seed no choice looked at (`baselines.REPORT_SEED`)
VAL_FALSE_ALARM = 0.02  # share of val cases above the threshold
PHANTOM_SIZE = 256  # phantom films are made at this size, as the samples, `segu` and `evaluate` make them
BATCH = 64
BOOTSTRAP = 2000
FALSE_ALARM_BAR = 0.05  # issue 28: at most 5% of phantom test cases flagged
DETECTION_BAR = 0.90  # issue 28: at least 90% of the real radiographs flagged
PHANTOM_DATA = "synthetic phantom films"
NOTE = ("Out-of-domain statistics of the bundled models (Mahalanobis distance on pooled features), made by "
        "`python -m xai_core ood --fit --model NAME`.")
ENCODING = ("base64 of little-endian float32: `mean` [D]; `precision_cholesky` the lower triangle (row-major) of L "
            "with precision = L L^T, so that the distance is |(x - mean) L|")
UNRELIABLE = "unreliable: out of domain"
IN_DOMAIN, OUT_OF_DOMAIN, NOT_CHECKED = "in domain", "out of domain", "not checked"


def banner(trained_on: str = PHANTOM_DATA) -> str:
    """What every page, export and report says when the guard fires."""
    return (f"This image does not look like the images this model was trained on ({trained_on}): findings, maps "
            f"and certainty are unreliable.")


@dataclass(frozen=True)
class DomainCheck:
    """The guard's answer for one image and model: `status` is 'in domain', 'out of domain' or 'not checked'
    (no statistics for these weights; `note` says why)."""

    model: str
    status: str
    score: float | None = None
    threshold: float | None = None
    note: str = ""
    trained_on: str = PHANTOM_DATA

    @property
    def out_of_domain(self) -> bool | None:
        """True when the guard fires, False when the image passed it, None when it was not checked."""
        return None if self.status == NOT_CHECKED else self.status == OUT_OF_DOMAIN

    @property
    def message(self) -> str:
        """The banner when the guard fires, else the note ('' for an image in domain)."""
        return banner(self.trained_on) if self.out_of_domain else self.note

    def score_line(self) -> str:
        """The score against its threshold in words ('' when not checked)."""
        if self.score is None or self.threshold is None:
            return ""
        side = "above" if self.out_of_domain else "within"
        return (f"out-of-domain score {self.score:.1f} ({side} the threshold {self.threshold:.1f}: Mahalanobis "
                f"distance of the image's features to the model's training images)")

    def to_json(self) -> dict[str, Any]:
        """The CLI's and the stored results' keys: `out_of_domain` (true/false/null), `ood_score`,
        `ood_threshold`, `ood_note`."""
        return {"out_of_domain": self.out_of_domain, "ood_score": self.score, "ood_threshold": self.threshold,
                "ood_note": self.message}


def not_checked(model: str, note: str) -> DomainCheck:
    """The answer where the guard cannot look (`note` says why): never 'in domain'."""
    return DomainCheck(model, NOT_CHECKED, note=note)


@dataclass(frozen=True)
class OodStats:
    """A fitted Gaussian and its threshold, with the record it was read from."""

    mean: np.ndarray
    cholesky: np.ndarray  # lower triangular L, precision = L L^T
    threshold: float
    record: dict[str, Any] = field(default_factory=dict, compare=False)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distances [B] of features [B, D]."""
        centred = np.asarray(features, np.float64).reshape(-1, self.mean.size) - self.mean
        return np.sqrt(np.square(centred @ self.cholesky).sum(1))

    def check(self, model: str, features: np.ndarray) -> DomainCheck:
        """The answer for one image's features [D]."""
        score = float(self.scores(features)[0])
        status = OUT_OF_DOMAIN if not math.isfinite(score) or score > self.threshold else IN_DOMAIN
        return DomainCheck(model, status, score, self.threshold,
                           trained_on=self.record.get("trained_on", PHANTOM_DATA))


def fit_gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, Cholesky factor L of the precision, shrinkage) of features [N, D] (Ledoit-Wolf)."""
    estimator = LedoitWolf().fit(np.asarray(features, np.float64))
    precision = (estimator.precision_ + estimator.precision_.T) / 2
    return estimator.location_, np.linalg.cholesky(precision), float(estimator.shrinkage_)


def encode(array: np.ndarray) -> str:
    """An array as base64 of little-endian float32."""
    return base64.b64encode(np.ascontiguousarray(array, "<f4").tobytes()).decode("ascii")


def decode(text: str) -> np.ndarray:
    """`encode`'s text back as a float64 vector."""
    return np.frombuffer(base64.b64decode(text), "<f4").astype(np.float64)


def pack_stats(mean: np.ndarray, cholesky: np.ndarray, threshold: float) -> dict[str, Any]:
    """The stored form of a Gaussian and threshold (`ENCODING`)."""
    return {"dim": int(mean.size), "encoding": ENCODING, "mean": encode(mean),
            "precision_cholesky": encode(cholesky[np.tril_indices(mean.size)]), "threshold": float(threshold)}


def unpack_stats(record: dict[str, Any]) -> OodStats:
    """An `OodStats` from its stored record (`pack_stats` plus provenance)."""
    dim = int(record["dim"])
    mean = decode(record["mean"])
    packed = decode(record["precision_cholesky"])
    if mean.size != dim or packed.size != dim * (dim + 1) // 2:
        raise InputError(f"the out-of-domain statistics of {record.get('model')} are damaged (sizes do not match "
                         f"dim {dim}); make them again with `{fit_command(str(record.get('model')))}`")
    cholesky = np.zeros((dim, dim))
    cholesky[np.tril_indices(dim)] = packed
    return OodStats(mean, cholesky, float(record["threshold"]), record)


def fit_command(model: str) -> str:
    """The command that makes a model's statistics."""
    return f"python -m xai_core ood --fit --model {model}"


def shipped_file() -> Path:
    """The statistics shipped with the bundled models."""
    return bundled.MODELS_DIR / FILE_NAME


def local_file() -> Path:
    """Statistics made on this machine (read before the shipped ones)."""
    return data_dir() / FILE_NAME


def stats_files() -> list[Path]:
    """Where statistics are looked up, in order."""
    return [local_file(), shipped_file()]


_lock = threading.Lock()
_read_cache: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}
_stats_cache: dict[tuple[Path, tuple[int, int], str], OodStats] = {}


def _read(path: Path) -> tuple[tuple[int, int], dict[str, Any]] | None:
    """(file version, parsed content) of a statistics file, parsed once per version; None where it is absent."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    version = (stat.st_mtime_ns, stat.st_size)
    with _lock:
        cached = _read_cache.get(path)
        if cached is None or cached[0] != version:
            try:
                cached = (version, json.loads(path.read_text()))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"{path.name} is not valid JSON ({type(exc).__name__}); delete it or make it "
                                 f"again with `python -m xai_core ood --fit`") from exc
            _read_cache[path] = cached
        return cached


def weights_of(handle: ModelHandle) -> str | None:
    """What the statistics record of a model's weights: their sha256 ('random-weights' without trained weights)."""
    return "random-weights" if handle.random_weights else handle.card.provenance.get("weights_sha256")


def find_stats(model: str, weights: str | None, files: list[Path] | None = None) -> tuple[OodStats | None, str]:
    """The statistics of a model's weights (the local file first, then the shipped one), or None and a sentence
    saying why there are none. Statistics recorded for other weights are refused."""
    stale = []
    for path in files or stats_files():
        try:
            found = _read(path)
        except InputError as exc:
            return None, f"not checked: {exc}"
        if found is None:
            continue
        version, content = found
        record = content.get("models", {}).get(model)
        if not isinstance(record, dict):
            continue
        if record.get("weights_sha256") != weights:
            stale.append(str(path))
            continue
        key = (path, version, model)
        with _lock:
            stats = _stats_cache.get(key)
        if stats is None:
            try:
                stats = unpack_stats({**record, "file": str(path)})
            except (InputError, KeyError, TypeError, ValueError) as exc:  # binascii.Error is a ValueError
                return None, (f"not checked: the out-of-domain statistics of {model} in {path.name} are damaged "
                              f"({type(exc).__name__}); make them again with `{fit_command(model)}`")
            with _lock:
                _stats_cache[key] = stats
        return stats, ""
    if stale:
        return None, (f"not checked: the out-of-domain statistics of {model} in {', '.join(stale)} were made for "
                      f"other weights; make new ones with `{fit_command(model)}`")
    return None, f"not checked: no out-of-domain statistics for {model} (make them with `{fit_command(model)}`)"


def has_features(handle: ModelHandle) -> bool:
    """Whether the guard can read this model's pooled features."""
    return callable(getattr(handle.module, "pooled", None))


def features(handle: ModelHandle, x: torch.Tensor) -> np.ndarray:
    """Pooled features [B, D] (float64) of network inputs [B, C, S, S]. Call under the model's lock: explainers'
    hooks must not see this forward."""
    with torch.inference_mode():
        return handle.module.pooled(x.to(handle.device)).float().cpu().numpy().astype(np.float64)


def stats_for(handle: ModelHandle) -> tuple[OodStats | None, str]:
    """`find_stats` for a loaded model, or None with why it cannot be checked at all."""
    name = handle.card.name
    if handle.random_weights:
        return None, f"not checked: {name} runs on random weights (testing mode)"
    if not has_features(handle):
        return None, f"not checked: {name} exposes no pooled features for the out-of-domain guard"
    weights = weights_of(handle)
    if weights is None:
        return None, f"not checked: {name}'s weights have no recorded sha256 to match statistics against"
    stats, note = find_stats(name, weights)
    if stats is None and not phantom_trained(handle) and "other weights" not in note:
        note = (f"not checked: no out-of-domain statistics for {name} (they are fitted on a model's own training "
                f"images, which this project does not have for it)")
    return stats, note


# --- fitting and measuring --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PhantomData:
    """A range of phantom cases: split, seed, first index, count, shortcut strength (None: no tag)."""

    split: str
    seed: int
    start: int
    n: int
    shortcut: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stored description of the cases."""
        return {"split": self.split, "seed": self.seed, "indices": [self.start, self.start + self.n],
                "shortcut": self.shortcut, "size": PHANTOM_SIZE}


def phantom_trained(handle: ModelHandle) -> bool:
    """Whether the model's card says it was trained on phantom data, with the cases recorded."""
    provenance = handle.card.provenance
    return "phantom" in str(provenance.get("source", "")) and "train" in (provenance.get("data") or {})


def training_data(handle: ModelHandle) -> tuple[int, int, float | None]:
    """(train data seed, val seed, shortcut) of a phantom-trained model, from its card's provenance; InputError for
    a model not trained on phantom data (its statistics must come from its own training images)."""
    provenance = handle.card.provenance
    data, seeds = provenance.get("data") or {}, provenance.get("seeds") or {}
    if not phantom_trained(handle):
        raise InputError(f"{handle.card.name} was not trained on phantom data: its out-of-domain statistics must be "
                         f"fitted on its own training images, which this command cannot make")
    default = int(seeds.get("data", 0))
    train = data["train"]
    return int(train.get("seed", default)), int((data.get("val") or {}).get("seed", default)), train.get("shortcut")


def phantom_inputs(handle: ModelHandle, data: PhantomData) -> Iterator[torch.Tensor]:
    """Batches [B, C, S, S] of the model's inputs for phantom cases, as the engine prepares them."""
    for first in range(data.start, data.start + data.n, BATCH):
        last = min(first + BATCH, data.start + data.n)
        yield torch.stack([preprocess(Radiograph.from_array(
            generate_case(data.split, i, seed=data.seed, size=PHANTOM_SIZE, shortcut=data.shortcut).image),
            handle.card.input)[0] for i in range(first, last)])


def phantom_features(handle: ModelHandle, data: PhantomData, lock: Any = None,
                     progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Pooled features [N, D] of phantom cases (under `lock`, a context manager, where given)."""
    out = []
    for x in phantom_inputs(handle, data):
        if lock is None:
            out.append(features(handle, x))
        else:
            with lock:
                out.append(features(handle, x))
        if progress is not None:
            progress(len(x))
    return np.concatenate(out) if out else np.zeros((0, 0))


def threshold_at(scores: np.ndarray, false_alarm: float = VAL_FALSE_ALARM) -> float:
    """The score above which `false_alarm` of these (in-domain) scores lie."""
    return float(np.quantile(np.asarray(scores, np.float64), 1.0 - false_alarm))


def bootstrap_rate(flags: np.ndarray, seed: int = 0, n_boot: int = BOOTSTRAP) -> dict[str, Any]:
    """Share of True flags with a percentile bootstrap 95% interval (None where there are no flags)."""
    flags = np.asarray(flags, bool)
    if flags.size == 0:
        return {"n": 0, "flagged": 0, "rate": None, "ci_low": None, "ci_high": None, "bootstrap": n_boot}
    rng = np.random.default_rng(seed)
    rates = flags[rng.integers(0, flags.size, (n_boot, flags.size))].mean(1)
    low, high = np.percentile(rates, [2.5, 97.5])
    return {"n": int(flags.size), "flagged": int(flags.sum()), "rate": float(flags.mean()), "ci_low": float(low),
            "ci_high": float(high), "bootstrap": n_boot}


def summary(scores: np.ndarray) -> dict[str, float]:
    """Median, 95th percentile and maximum of scores."""
    if len(scores) == 0:
        return {}
    q50, q95 = np.percentile(scores, [50, 95])
    return {"median": float(q50), "p95": float(q95), "max": float(np.max(scores))}


def stats_record(model: str, weights: str | None, stats: OodStats, *, fit: PhantomData, val: PhantomData,
                 shrinkage: float, val_scores: np.ndarray, command: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The stored record: the packed Gaussian and threshold, the data and seeds, the val figures and `extra`
    (measured figures, timings)."""
    val_flags = val_scores > stats.threshold
    return finite_json({
        "model": model, "weights_sha256": weights, "trained_on": PHANTOM_DATA, "command": command,
        **pack_stats(stats.mean, stats.cholesky, stats.threshold),
        "features": "pooled: the classifier head's input (ReLU of the last feature map, global average pool)",
        "input": f"phantom films made at {PHANTOM_SIZE} px, through the engine's preprocessing",
        "estimator": {"kind": "ledoit-wolf", "shrinkage": shrinkage, "sklearn": sklearn.__version__},
        "score": "Mahalanobis distance to the fitted Gaussian",
        "fit": fit.to_dict(),
        "val": {**val.to_dict(), "target_false_alarm_rate": VAL_FALSE_ALARM,
                "false_alarm_rate": float(val_flags.mean()), "scores": summary(val_scores)},
        **extra,
    })


def store_record(model: str, record: dict[str, Any], path: Path | None = None) -> Path:
    """Keep a model's statistics (atomic write under a cross-process lock), in the shipped file unless `path`."""
    target = path or shipped_file()

    def put(data: dict[str, Any]) -> None:
        data["version"] = FORMAT_VERSION
        data.setdefault("models", {})[model] = record
        data["models"] = dict(sorted(data["models"].items()))

    update_json(target, put, {"note": NOTE, "version": FORMAT_VERSION, "models": {}})
    return target


def false_alarms(handle: ModelHandle, stats: OodStats, data: PhantomData, lock: Any = None,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """How often the guard fires on in-domain phantom cases, with a bootstrap interval and the bar."""
    scores = stats.scores(phantom_features(handle, data, lock, progress))
    rate = bootstrap_rate(scores > stats.threshold, seed=data.seed)
    return {"data": f"phantom:{data.split}", **data.to_dict(), **rate, "bar": FALSE_ALARM_BAR,
            "passes": rate["rate"] is not None and rate["rate"] <= FALSE_ALARM_BAR, "scores": summary(scores)}


def detections(handle: ModelHandle, stats: OodStats, paths: list[Path], lock: Any = None) -> dict[str, Any]:
    """How often the guard fires on real radiographs (files read as the dashboard reads them), per file by content
    hash (never by name); a file that cannot be read counts as missed, with the reason."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        try:
            radiograph = load_radiograph(path)
        except InputError as exc:
            # the reason by kind only: a loader's message can name the file, and names identify patients
            rows.append({"sha256": None, "score": None, "out_of_domain": False, "error": type(exc).__name__})
            continue
        x, _ = preprocess(radiograph, handle.card.input)
        if lock is None:
            values = features(handle, x[None])
        else:
            with lock:
                values = features(handle, x[None])
        score = float(stats.scores(values)[0])
        rows.append({"sha256": radiograph.sha256, "score": score, "out_of_domain": score > stats.threshold})
    flags = np.array([row["out_of_domain"] for row in rows], bool)
    rate = bootstrap_rate(flags)
    return {**rate, "bar": DETECTION_BAR, "passes": rate["rate"] is not None and rate["rate"] >= DETECTION_BAR,
            "scores": summary(np.array([r["score"] for r in rows if r["score"] is not None])), "per_file": rows}
