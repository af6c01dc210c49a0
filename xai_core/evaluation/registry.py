"""The metric registry: every evaluation metric with Quantus-style metadata and the function that computes it.

A metric is registered once, with its name, group, direction ("higher" or "lower" is better), what it needs beyond
the map (a lesion mask, the model, gaze fixations, an anatomy region), the range its values lie in and a function of
a `MapContext`. The groups and names the CLI and the pages offer, the per-image CSV's columns and the generic tests
(tests/test_evaluation.py) all come from the registry. Metrics that share work (deletion and insertion, SIC and AIC,
the four gaze scores) read it from the context, which computes it once per map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from xai_core import removal as removal_ops
from xai_core.errors import UnknownNameError
from xai_core.metrics import pic
from xai_core.metrics.faithfulness import deletion_insertion, faithfulness_correlation
from xai_core.metrics.gaze import GazeKernel, cc, gaze_heatmap, kl_divergence, nss, sim
from xai_core.metrics.localisation import auitc, iou_at, pointing_game, relevance_mass, relevance_rank
from xai_core.metrics.shape import complexity, sparseness
from xai_core.segx import refine

Direction = Literal["higher", "lower"]
NEEDS = ("mask", "model", "fixations", "region")  # what a metric may need besides the map
REMOVAL_METRICS = ("deletion_auc", "insertion_auc", "faithfulness_corr")  # they read the removal's baseline
CURVE_SAMPLES = 101  # points kept per SIC/AIC curve (x = 0, 0.01, ..., 1) for the median curves
PIC_KINDS = ("sic", "aic")
PIC_KEPT, PIC_EMPTY_MAP = "kept", "empty_map"  # PIC outcomes besides the skip rules (MapContext.pic_outcome)
Scorer = Callable[[np.ndarray], np.ndarray]  # pixel images [N, S, S] in [0, 1] -> the target's probability [N]


@dataclass
class MapContext:
    """One relevance map and what its metrics may read: the image, the finding's lesion mask, a scorer of the
    finding (the model), gaze fixations and the finding's anatomy region. Work shared by several metrics is
    computed on first use and kept; `curves` receives the SIC/AIC curves (CURVE_SAMPLES points each)."""

    relevance: np.ndarray  # [S, S], non-negative
    image: np.ndarray | None = None  # [S, S] pixels in [0, 1]
    mask: np.ndarray | None = None  # bool [S, S]: the finding's lesion
    score: Scorer | None = None
    decision_threshold: float = 0.5  # the model's operating point for the finding (AIC: still predicted)
    fixations: np.ndarray | None = None  # [N, 3] x, y, duration on the [S, S] grid
    region: np.ndarray | None = None  # bool [S, S]: the finding's anatomy (SegX)
    pic_mask: np.ndarray | None = None  # PIC's fixed random kept pixels; default: 1% drawn with seed 0
    # the gaze heatmap's kernel (xai_core.metrics.gaze): a GazeKernel or preset name, None: mimic (legacy where only
    # gaze_sigma is given); gaze_sigma overrides its blur; gaze_source_px: source pixels the grid's side spans
    gaze_kernel: GazeKernel | str | float | None = None
    gaze_sigma: float | None = None
    gaze_source_px: float | None = None
    bokeh_cache: dict[bytes, tuple[np.ndarray, int]] | None = None  # PIC bokeh images of this image, by kept set
    # faithfulness correlation's in-filled images of this image, by removal: its random subsets do not depend on
    # the map, so every map of a case shares them
    subset_cache: dict[str, np.ndarray] | None = None
    # how deletion, insertion and faithfulness correlation remove pixels (xai_core.removal; in pixel space [0, 1]):
    # ROAD's noisy linear imputation by default; "blur", "mean", or "constant" (mid-grey, the legacy baseline)
    removal: str = removal_ops.DEFAULT_METHOD
    removal_params: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    _shared: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def available(self) -> frozenset[str]:
        """The needs (see NEEDS) this context meets."""
        present = {"mask": self.mask is not None, "model": self.score is not None and self.image is not None,
                   "fixations": self.fixations is not None, "region": self.region is not None}
        return frozenset(name for name, ok in present.items() if ok)

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()`, once per context."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]

    def remover(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """The removal operator of deletion, insertion and faithfulness correlation, on pixel images in [0, 1]."""
        defaults = {"constant": {"value": 0.5}, "road": removal_ops.FAST_SOLVER}.get(self.removal, {})
        params = {**defaults, **self.removal_params}
        return removal_ops.numpy_remover(self.removal, value_range=(0.0, 1.0), **params)

    def deletion_insertion(self) -> dict[str, float]:
        return self.shared("deletion_insertion", lambda: deletion_insertion(
            np.asarray(self.image, np.float32), self.relevance, self.score, remover=self.remover()))

    def pic(self) -> dict[str, pic.PicResult | pic.PicSkip]:
        """SIC and AIC of the map from the same bokeh images and model calls."""
        def compute() -> dict[str, pic.PicResult | pic.PicSkip]:
            image_u8 = (np.clip(self.image, 0, 1) * 255).round().astype(np.uint8)
            mask = self.pic_mask if self.pic_mask is not None else pic.random_mask(image_u8.shape, 0.01, seed=0)
            results = pic.sic_aic(image_u8, self.relevance,
                                  lambda images: self.score(np.asarray(images, np.float32) / 255.0),
                                  mask, self.decision_threshold, cache=self.bokeh_cache)
            for kind, curve in results.items():
                if not isinstance(curve, pic.PicSkip):
                    step = (len(curve.curve_y) - 1) // (CURVE_SAMPLES - 1)
                    self.curves[kind] = [round(float(y), 4) for y in curve.curve_y[::step]]
            return results

        return self.shared("pic", compute)

    def pic_outcome(self, kind: str) -> str:
        """What became of the map's `kind` ("sic" or "aic") curve: "kept", the PIC skip rule that dropped the image
        (a key of pic.SKIP_RULES), "empty_map" (no curve: the map has no relevance), or "" when it was not asked
        for."""
        if "pic" in self._shared:
            curve = self._shared["pic"][kind]
            return curve.rule if isinstance(curve, pic.PicSkip) else PIC_KEPT
        return "" if has_relevance(self.relevance) else PIC_EMPTY_MAP

    def gaze_heat(self) -> np.ndarray:
        return self.shared("gaze_heat", lambda: gaze_heatmap(self.fixations, self.relevance.shape, self.gaze_sigma,
                                                             kernel=self.gaze_kernel, source_px=self.gaze_source_px))


def has_relevance(relevance: np.ndarray) -> bool:
    """Whether a map can be scored at all: finite and not all zero (an empty map has no ranking, no maximum and no
    distribution, so every metric of it is NaN)."""
    a = np.asarray(relevance)
    return bool(a.size and np.isfinite(a).all() and np.abs(a).max() > 0)


@dataclass(frozen=True)
class Metric:
    """A registered metric (Quantus-style metadata) and its function of a MapContext."""

    name: str
    group: str
    direction: Direction
    needs: frozenset[str]
    bounds: tuple[float, float]  # the range its values lie in
    description: str
    compute: Callable[[MapContext], float] = field(repr=False, compare=False)

    def applicable(self, context: MapContext) -> bool:
        """Whether the context holds what the metric needs."""
        return self.needs <= context.available()

    def __call__(self, context: MapContext) -> float:
        """The metric of one map: a float, NaN where it is undefined (a need missing, an empty map, or undefined
        for this map, e.g. a PIC skip)."""
        if not self.applicable(context) or not has_relevance(context.relevance):
            return float("nan")
        return float(self.compute(context))

    def better(self, a: float, b: float) -> bool:
        """Whether value `a` is strictly better than `b` in this metric's direction."""
        return a > b if self.direction == "higher" else a < b


REGISTRY: dict[str, Metric] = {}


def register(name: str, group: str, direction: Direction, *, needs: tuple[str, ...] = (),
             bounds: tuple[float, float] = (-math.inf, math.inf), description: str = ""
             ) -> Callable[[Callable[[MapContext], float]], Callable[[MapContext], float]]:
    """Decorator: add a metric (its function of a MapContext) to the registry."""
    if name in REGISTRY:
        raise ValueError(f"metric '{name}' is already registered")
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"unknown needs {sorted(unknown)}; use {', '.join(NEEDS)}")

    def add(compute: Callable[[MapContext], float]) -> Callable[[MapContext], float]:
        REGISTRY[name] = Metric(name, group, direction, frozenset(needs), bounds, description, compute)
        return compute

    return add


def get_metric(name: str) -> Metric:
    """A registered metric by name; UnknownNameError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise UnknownNameError(f"unknown metric '{name}'; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def metric_groups() -> dict[str, tuple[str, ...]]:
    """Group -> metric names, in registration order."""
    groups: dict[str, tuple[str, ...]] = {}
    for metric in REGISTRY.values():
        groups[metric.group] = (*groups.get(metric.group, ()), metric.name)
    return groups


def resolve_metrics(spec: str) -> list[str]:
    """'all', group names and metric names, comma-separated -> metric names (registration order within a group,
    duplicates dropped)."""
    groups = metric_groups()
    chosen: list[str] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "all":
            chosen += REGISTRY
        elif item in groups:
            chosen += groups[item]
        elif item in REGISTRY:
            chosen.append(item)
        else:
            raise UnknownNameError(f"unknown metric '{item}'; use all, a group ({', '.join(groups)}) or one of "
                           f"{', '.join(REGISTRY)}")
    return list(dict.fromkeys(chosen))


def compute_metrics(names: list[str] | set[str] | tuple[str, ...], context: MapContext) -> dict[str, float]:
    """The named metrics of one map, in registry order; metrics whose needs the context lacks are left out (the
    runner writes them as empty cells), undefined values are NaN."""
    wanted = set(names)
    for name in wanted:
        get_metric(name)
    return {name: metric(context) for name, metric in REGISTRY.items()
            if name in wanted and metric.applicable(context)}


def _first(values: np.ndarray) -> float:
    return float(values[0])


# Localisation: against the finding's lesion mask.
@register("relevance_mass", "localisation", "higher", needs=("mask",), bounds=(0.0, 1.0),
          description="share of the total relevance inside the lesion")
def _relevance_mass(c: MapContext) -> float:
    return _first(relevance_mass(c.relevance[None], c.mask[None]))


@register("relevance_rank", "localisation", "higher", needs=("mask",), bounds=(0.0, 1.0),
          description="share of the K most relevant pixels inside the lesion, K = lesion area")
def _relevance_rank(c: MapContext) -> float:
    return _first(relevance_rank(c.relevance[None], c.mask[None]))


@register("pointing_game", "localisation", "higher", needs=("mask",), bounds=(0.0, 1.0),
          description="1 when a maximum of the map lies inside the lesion (any of tied maxima), else 0")
def _pointing_game(c: MapContext) -> float:
    return _first(pointing_game(c.relevance[None], c.mask[None]))


@register("iou_at_5", "localisation", "higher", needs=("mask",), bounds=(0.0, 1.0),
          description="IoU of the map's top 5% pixels with the lesion")
def _iou_at_5(c: MapContext) -> float:
    return _first(iou_at(c.relevance[None], c.mask[None], 5.0))


@register("auitc", "localisation", "higher", needs=("mask",), bounds=(0.0, 1.0),
          description="area under IoU(min-max scaled map >= t, lesion) over t in [0, 1]")
def _auitc(c: MapContext) -> float:
    return _first(auitc(c.relevance[None], c.mask[None]))


# Shape of the map alone.
@register("complexity", "shape", "lower", bounds=(0.0, math.inf),
          description="entropy of |a| / sum |a|: low for maps that concentrate their relevance")
def _complexity(c: MapContext) -> float:
    return _first(complexity(c.relevance[None]))


@register("sparseness", "shape", "higher", bounds=(0.0, 1.0),
          description="Gini index of |a|: 0 for a flat map, near 1 for a single hot pixel")
def _sparseness(c: MapContext) -> float:
    return _first(sparseness(c.relevance[None]))


# Faithfulness: the model's score while pixels are removed (in-filled by the context's removal operator) or added
# by decreasing relevance. REMOVAL_METRICS are the ones the baseline self-check can invalidate per finding.
@register("deletion_auc", "faithfulness", "lower", needs=("model",), bounds=(0.0, 1.0),
          description="area under the target score while the most relevant pixels are removed first")
def _deletion_auc(c: MapContext) -> float:
    return c.deletion_insertion()["deletion_auc"]


@register("insertion_auc", "faithfulness", "higher", needs=("model",), bounds=(0.0, 1.0),
          description="area under the target score while the most relevant pixels are added first")
def _insertion_auc(c: MapContext) -> float:
    return c.deletion_insertion()["insertion_auc"]


@register("faithfulness_corr", "faithfulness", "higher", needs=("model",), bounds=(-1.0, 1.0),
          description="Pearson correlation of random subsets' relevance sums with the score drop on removing them")
def _faithfulness_corr(c: MapContext) -> float:
    remover, cache = c.remover(), c.subset_cache if c.subset_cache is not None else {}
    key = f"{c.removal}|{sorted(c.removal_params.items())}"

    def shared(images: np.ndarray, removed: np.ndarray) -> np.ndarray:
        if key not in cache:
            cache[key] = remover(images, removed)
        return cache[key]

    return faithfulness_correlation(np.asarray(c.image, np.float32), c.relevance, c.score, remover=shared)


# Performance information curves (PIC; NaN where the skip rules drop the image).
def _pic_auc(kind: str) -> Callable[[MapContext], float]:
    def compute(c: MapContext) -> float:
        curve = c.pic()[kind]
        return float("nan") if isinstance(curve, pic.PicSkip) else curve.auc

    return compute


register("sic_auc", "pic", "higher", needs=("model",), bounds=(0.0, 1.0),
         description="area under the softmax information curve (normalised score vs normalised WebP size)"
         )(_pic_auc("sic"))
register("aic_auc", "pic", "higher", needs=("model",), bounds=(0.0, 1.0),
         description="area under the accuracy information curve (still predicted vs normalised WebP size)"
         )(_pic_auc("aic"))


# SegX: the map refined to the finding's anatomy, against the lesion.
@register("segx_iou_at_5", "segx", "higher", needs=("mask", "region"), bounds=(0.0, 1.0),
          description="IoU of the top 5% pixels of the soft SegX-refined map with the lesion")
def _segx_iou_at_5(c: MapContext) -> float:
    return _first(iou_at(refine(c.relevance, c.region, "soft")[None], c.mask[None], 5.0))


# Eye-gaze plausibility against the reader's fixations.
@register("gaze_kl", "gaze", "lower", needs=("fixations",), bounds=(0.0, math.inf),
          description="KL(gaze heatmap || map), both normalised to sum 1")
def _gaze_kl(c: MapContext) -> float:
    return kl_divergence(c.gaze_heat(), c.relevance)


@register("gaze_nss", "gaze", "higher", needs=("fixations",),
          description="mean z-scored relevance at the fixation points")
def _gaze_nss(c: MapContext) -> float:
    return nss(c.relevance, c.fixations)


@register("gaze_cc", "gaze", "higher", needs=("fixations",), bounds=(-1.0, 1.0),
          description="Pearson correlation of the map with the gaze heatmap")
def _gaze_cc(c: MapContext) -> float:
    return cc(c.gaze_heat(), c.relevance)


@register("gaze_sim", "gaze", "higher", needs=("fixations",), bounds=(0.0, 1.0),
          description="histogram intersection of the map and the gaze heatmap")
def _gaze_sim(c: MapContext) -> float:
    return sim(c.gaze_heat(), c.relevance)


METRIC_GROUPS: dict[str, tuple[str, ...]] = metric_groups()  # the built-in metrics' groups
ALL_METRICS: tuple[str, ...] = tuple(REGISTRY)
