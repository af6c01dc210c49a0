"""Simulated radiologist eye-gaze on a phantom chest film: a systematic search with conspicuity-driven lesion dwell.

What it imitates, in short (docs/gaze-simulator.md has every parameter and the reasons for its value):
- a global impression first (one fixation near the centre of the film; very conspicuous lesions are caught by
  peripheral vision and fixated at once), then a systematic search region by region: upper, middle and lower zone of
  each lung, both costophrenic angles, the heart and the mediastinum, in one of a few reader strategies;
- fixation durations from a log-normal law (median 260 ms: mostly 200-400 ms, with a long tail), longer on lesions;
  saccades of a few degrees inside a region (gamma law, mean 4 deg), their durations from the saccadic main sequence;
- a lesion is noticed when a fixation lands within the useful field of view around it, with a probability that grows
  with its conspicuity (size x contrast against its own surroundings, reduced at the apex and where dense structures
  overlie it), measured on the case's own image and masks; a noticed lesion gets a focal examination of several
  fixations (more and longer the more conspicuous it is);
- satisfaction of search: once a conspicuous lesion is found, the chance to notice further lesions drops and the rest
  of the search is shorter, so small lesions are often missed;
- small Gaussian fixation jitter (fixational eye movements and eye-tracker error).

The ranges follow the eye-tracking literature on chest-film reading in general terms: studies of radiologists
searching chest radiographs for nodules (the global-focal search model, useful field of view and cumulative-dwell
studies), work on satisfaction of search in chest radiology, and the public chest X-ray gaze data sets (REFLACX,
MIMIC-CXR eye-gaze) report fixation durations of a few hundred milliseconds, saccades of a few degrees, reads of
several seconds up to about 20 s of search, and longer cumulative dwell on lesions that are reported than on those
that are missed. The values are our own choices within those ranges, not fitted to any data set.

Determinism: everything random comes from the generator handed in (the case's gaze stream), in a fixed order.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

GAZE_VERSION = 3  # bump whenever simulated fixations change (the split writer records it)
# 3: the same simulator on its own stream spawned from the case's seed (independent of the report's draws)

# structures that can overlie a lung lesion and hide part of it (retrocardiac, paraspinal, subclavicular, basal)
_DENSE = ("heart", "mediastinum", "spine", "clavicles", "diaphragm")
_LUNGS = ("right_lung", "left_lung")
_MAX_DISTANCE_POINTS = 96  # lesion pixels kept (an even stride) for the distance from a fixation to a lesion


@dataclass(frozen=True)
class GazeParams:
    """Parameters of the gaze simulator (degrees of visual angle, milliseconds)."""

    film_width_deg: float = 32.5  # a 35 cm film seen from ~60 cm: 2 * atan(17.5 / 60)
    start_latency_ms: tuple[float, float] = (150.0, 400.0)  # image onset to the first fixation
    # fixation durations: log-normal (median, log-sd) clipped to a range; search (normal anatomy) and on a lesion
    search_median_ms: float = 260.0
    search_sigma: float = 0.35
    search_range_ms: tuple[float, float] = (100.0, 1500.0)
    lesion_median_ms: float = 300.0  # at conspicuity 0; times (1 + lesion_dwell_gain * conspicuity)
    lesion_dwell_gain: float = 1.0
    lesion_sigma: float = 0.45
    lesion_range_ms: tuple[float, float] = (120.0, 2500.0)
    # saccades: target amplitude inside a region ~ gamma(shape, mean); duration = base + slope * amplitude
    saccade_mean_deg: float = 4.0
    saccade_shape: float = 2.5
    saccade_base_ms: float = 21.0
    saccade_ms_per_deg: float = 2.2
    candidates: int = 6  # candidate landing points per saccade; the one nearest the target amplitude is taken
    jitter_deg: float = 0.25
    # systematic search: mean fixations per region (Poisson, at least one), scaled per read by a log-normal factor
    lung_zone_fixations: float = 2.5
    costophrenic_fixations: float = 1.5
    heart_fixations: float = 2.5
    mediastinum_fixations: float = 2.0
    thoroughness_sigma: float = 0.25
    costophrenic_radius_deg: float = 1.5
    centre_sd_deg: float = 1.5  # scatter of the first (global impression) fixation around the film's centre
    mirror_probability: float = 0.3  # a read starts with the patient's left lung instead of the right
    # conspicuity = location factor * (1 - exp(-(contrast / contrast_ref) * (size / size_ref_deg) ** size_power))
    contrast_ref: float = 0.1
    size_ref_deg: float = 2.5
    size_power: float = 2.0
    apical_fraction: float = 0.2  # the top share of a lung's height counted as its apex
    apical_factor: float = 0.7
    obscured_weight: float = 0.5  # conspicuity times (1 - weight * share of the lesion under dense structures)
    # detection: P(global) = conspicuity ** global_power; per search fixation, P = conspicuity * exp(-d^2 / 2 ufov^2)
    global_power: float = 3.0
    ufov_deg: float = 3.0
    focal_gain: float = 4.0  # focal fixations on a noticed lesion: 1 + Poisson(focal_gain * conspicuity)
    # satisfaction of search: after a find of conspicuity >= threshold, the notice probability of every subtle lesion
    # (conspicuity below the threshold) times sos_factor, and each remaining region's fixations thinned to
    # sos_search_factor
    sos_threshold: float = 0.7
    sos_factor: float = 0.35
    sos_search_factor: float = 0.75
    revisit_gain: float = 0.5  # P(a last look back at a found lesion) = revisit_gain * conspicuity
    max_read_ms: float = 30000.0


DEFAULT_PARAMS = GazeParams()


@dataclass
class _Lesion:
    name: str
    pixels: np.ndarray  # [N, 2] x, y of every lesion pixel
    outline: np.ndarray  # [M, 2] a subsample of its pixels, for distances
    conspicuity: float
    found: bool = False


def _crop(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice] | None:
    """The bounding box of a mask's pixels (grown by `margin`, within the image); None for an empty mask."""
    left, top, width, height = cv2.boundingRect(np.ascontiguousarray(mask).view(np.uint8))
    if not width:
        return None
    h, w = mask.shape
    return (slice(max(0, top - margin), min(h, top + height + margin)),
            slice(max(0, left - margin), min(w, left + width + margin)))


def _coords(mask: np.ndarray) -> np.ndarray:
    """[N, 2] x, y of a mask's pixels."""
    box = _crop(mask)
    if box is None:
        return np.zeros((0, 2))
    ys, xs = np.nonzero(mask[box])
    return np.stack([xs + box[1].start, ys + box[0].start], 1).astype(np.float64)


class _Region:
    """A search region: the pixels of a mask inside a box, drawn by rejection sampling within the box."""

    def __init__(self, mask: np.ndarray, box: tuple[slice, slice], mean_fixations: float) -> None:
        self.crop = mask[box]
        self.x0, self.y0 = box[1].start, box[0].start
        self.mean_fixations = mean_fixations
        self._pixels: np.ndarray | None = None

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Up to `count` (at least one) random pixels of the region: [n, 2] x, y."""
        h, w = self.crop.shape
        for _ in range(4):
            ys, xs = rng.integers(0, h, 4 * count), rng.integers(0, w, 4 * count)
            inside = np.flatnonzero(self.crop[ys, xs])[:count]
            if len(inside):
                return np.stack([xs[inside] + self.x0, ys[inside] + self.y0], 1).astype(np.float64)
        if self._pixels is None:  # a sparse region: draw from its pixel list
            ys, xs = np.nonzero(self.crop)
            self._pixels = np.stack([xs + self.x0, ys + self.y0], 1).astype(np.float64)
        return self._pixels[rng.integers(0, len(self._pixels), count)]


def _conspicuity_one(image: np.ndarray, anatomy: dict[str, np.ndarray], mask: np.ndarray, any_lesion: np.ndarray,
                     px_per_deg: float, params: GazeParams) -> float:
    area = int(mask.sum())
    if area == 0:
        return 0.0
    eq_diameter = 2.0 * np.sqrt(area / np.pi)
    ring_px = int(np.clip(round(0.25 * eq_diameter), 2, max(2, round(px_per_deg))))
    box = _crop(mask, ring_px + 1)
    if box is None:
        return 0.0
    m = mask[box].view(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1, 2 * ring_px + 1))
    ring = cv2.dilate(m, kernel).astype(bool) & ~mask[box]
    inner = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    perimeter = max(1, area - int(inner.sum()))
    # effective size: the geometric mean of the equivalent diameter and the hydraulic diameter 4A/P, both the
    # diameter for a disc; a thin rim or band (pneumothorax, plate atelectasis) counts smaller than its area says
    hydraulic = min(eq_diameter, 4.0 * area / perimeter)
    size_deg = float(np.sqrt(eq_diameter * hydraulic)) / px_per_deg
    lungs = anatomy["right_lung"][box] | anatomy["left_lung"][box]
    in_lung = float((mask[box] & lungs).sum()) / area
    surround = ring & ~any_lesion[box]
    if in_lung >= 0.5 and (surround & lungs).sum() >= 8:
        surround &= lungs  # a lung lesion is seen against the lung around it
    if surround.sum() < 8:
        surround = ring
    patch = image[box]
    contrast = abs(float(patch[mask[box]].mean()) - float(patch[surround].mean())) if surround.any() else 0.0
    visibility = (contrast / params.contrast_ref) * (size_deg / params.size_ref_deg) ** params.size_power
    value = 1.0 - np.exp(-visibility)
    # location: dense structures over the lesion, and the apex; a lesion that is itself a structure (cardiomegaly is
    # the heart) is judged by size and contrast alone
    dense = np.zeros_like(ring)
    for name in _DENSE:
        structure = anatomy[name]
        overlap = int((structure[box] & mask[box]).sum())
        if not overlap:
            continue
        if overlap >= 0.5 * structure.sum():
            return float(np.clip(value, 0.0, 1.0))
        dense |= structure[box]
    value *= 1.0 - params.obscured_weight * float((dense & mask[box]).sum()) / area
    if in_lung >= 0.5:
        side = max(_LUNGS, key=lambda n: int((anatomy[n][box] & mask[box]).sum()))
        rows = np.flatnonzero(anatomy[side].any(1))
        centre_row = float(np.nonzero(mask[box])[0].mean()) + box[0].start
        if len(rows) and centre_row < rows[0] + params.apical_fraction * (rows[-1] - rows[0]):
            value *= params.apical_factor
    return float(np.clip(value, 0.0, 1.0))


def conspicuity(image: np.ndarray, anatomy: dict[str, np.ndarray], lesions: dict[str, np.ndarray],
                params: GazeParams = DEFAULT_PARAMS) -> dict[str, float]:
    """Conspicuity in [0, 1] of each lesion, from its size, its contrast against its surroundings and its location."""
    px_per_deg = image.shape[1] / params.film_width_deg
    any_lesion = np.zeros(image.shape, bool)
    for mask in lesions.values():
        any_lesion |= mask
    return {name: _conspicuity_one(image, anatomy, mask, any_lesion, px_per_deg, params)
            for name, mask in lesions.items()}


def _regions(anatomy: dict[str, np.ndarray], px_per_deg: float, params: GazeParams) -> dict[str, _Region]:
    """The search regions by name: Rupper ... Llower (lung zones), Rcp, Lcp (costophrenic angles), heart,
    mediastinum; a structure missing from the film has none."""
    regions: dict[str, _Region] = {}
    for name in _LUNGS:
        lung = anatomy[name]
        box = _crop(lung)
        if box is None:
            continue
        side = name[0].upper()  # R, L: the patient's side
        top, bottom = box[0].start, box[0].stop  # zones: thirds of the lung's height, as the generator's
        height = bottom - top
        edges = [top + (zone * height + 2) // 3 for zone in range(4)]
        for zone, label in enumerate(("upper", "middle", "lower")):
            band = (slice(edges[zone], edges[zone + 1]), box[1])
            if edges[zone + 1] > edges[zone] and lung[band].any():
                regions[f"{side}{label}"] = _Region(lung, band, params.lung_zone_fixations)
        # the costophrenic angle: the lowest, most lateral corner of the lung
        base = (slice(top + (4 * height) // 5, bottom), box[1])
        ys, xs = np.nonzero(lung[base])
        lateral = 1.0 if (box[1].start + box[1].stop) / 2 > lung.shape[1] / 2 else -1.0
        k = int(np.argmax(ys + 0.5 * lateral * xs))
        cy, cx = ys[k] + base[0].start, xs[k] + base[1].start
        r = max(1, round(params.costophrenic_radius_deg * px_per_deg))
        corner = (slice(max(0, cy - r), min(lung.shape[0], cy + r + 1)),
                  slice(max(0, cx - r), min(lung.shape[1], cx + r + 1)))  # ogrid does not clip as indexing does
        yy, xx = np.ogrid[corner[0], corner[1]]
        disc = np.zeros(lung.shape, bool)
        disc[corner] = lung[corner] & ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
        regions[f"{side}cp"] = _Region(disc, corner, params.costophrenic_fixations)
    for name, mean in (("heart", params.heart_fixations), ("mediastinum", params.mediastinum_fixations)):
        box = _crop(anatomy[name])
        if box is not None:
            regions[name] = _Region(anatomy[name], box, mean)
    return regions


# reader strategies: orders of the regions (R, L: the patient's right and left lung)
_STRATEGIES = (
    ("Rupper", "Lupper", "Rmiddle", "Lmiddle", "Rlower", "Llower", "Rcp", "Lcp", "heart", "mediastinum"),
    ("Rupper", "Rmiddle", "Rlower", "Rcp", "Lupper", "Lmiddle", "Llower", "Lcp", "heart", "mediastinum"),
    ("mediastinum", "heart", "Rupper", "Lupper", "Rmiddle", "Lmiddle", "Rlower", "Llower", "Rcp", "Lcp"),
)


class _Reader:
    """The state of one read: fixations so far (durations drawn at the end), found lesions, satisfaction of search."""

    def __init__(self, rng: np.random.Generator, lesions: list[_Lesion], px_per_deg: float,
                 params: GazeParams) -> None:
        self.rng, self.lesions, self.ppd, self.p = rng, lesions, px_per_deg, params
        self.points: list[tuple[float, float]] = []
        self.dwell: list[float] = []  # the conspicuity of the lesion a fixation examines; -1 for search
        self.satisfied = False

    def fixate(self, point: np.ndarray, lesion: _Lesion | None = None) -> None:
        self.points.append((float(point[0]), float(point[1])))
        self.dwell.append(-1.0 if lesion is None else lesion.conspicuity)

    def search(self, region: _Region, count: int) -> None:
        """`count` fixations in a region, each followed by a chance to notice lesions: every saccade lands on the
        one of a few random candidate points whose distance is nearest a drawn saccade amplitude."""
        p = self.p
        amplitudes = self.rng.gamma(p.saccade_shape, p.saccade_mean_deg / p.saccade_shape, count) * self.ppd
        pool = region.sample(self.rng, count * p.candidates)
        if len(pool) < count * p.candidates:
            pool = pool[self.rng.integers(0, len(pool), count * p.candidates)]
        for candidates, amplitude in zip(pool.reshape(count, p.candidates, 2), amplitudes, strict=True):
            if self.points:
                here = self.points[-1]
                distance = np.hypot(candidates[:, 0] - here[0], candidates[:, 1] - here[1])
                self.fixate(candidates[int(np.argmin(np.abs(distance - amplitude)))])
            else:
                self.fixate(candidates[0])
            self.notice()

    def examine(self, lesion: _Lesion) -> None:
        """A focal examination of a noticed lesion; a conspicuous find brings on satisfaction of search."""
        p = self.p
        lesion.found = True
        count = 1 + int(self.rng.poisson(p.focal_gain * lesion.conspicuity))
        for point in lesion.pixels[self.rng.integers(0, len(lesion.pixels), count)]:
            self.fixate(point, lesion)
        if lesion.conspicuity >= p.sos_threshold:
            self.satisfied = True

    def factor(self, lesion: _Lesion) -> float:
        """Satisfaction of search: once satisfied, subtle lesions are less likely to be noticed."""
        return self.p.sos_factor if self.satisfied and lesion.conspicuity < self.p.sos_threshold else 1.0

    def notice(self) -> None:
        """Lesions caught in the useful field of view of the last fixation are examined, most conspicuous first."""
        unfound = [lesion for lesion in self.lesions if not lesion.found]
        if not unfound:
            return
        x, y = self.points[-1]
        draws = self.rng.random(len(unfound))
        ufov = self.p.ufov_deg * self.ppd
        caught = []
        for lesion, u in zip(unfound, draws, strict=True):
            distance = float(np.min(np.hypot(lesion.outline[:, 0] - x, lesion.outline[:, 1] - y)))
            chance = lesion.conspicuity * self.factor(lesion) * np.exp(-0.5 * (distance / ufov) ** 2)
            if u < chance:
                caught.append(lesion)
        for lesion in sorted(caught, key=lambda item: -item.conspicuity):
            self.examine(lesion)

    def durations(self) -> np.ndarray:
        """Fixation durations (ms): log-normal, longer on lesions the more conspicuous they are."""
        p = self.p
        dwell = np.asarray(self.dwell)
        on_lesion = dwell >= 0
        median = np.where(on_lesion, p.lesion_median_ms * (1.0 + p.lesion_dwell_gain * dwell), p.search_median_ms)
        sigma = np.where(on_lesion, p.lesion_sigma, p.search_sigma)
        low = np.where(on_lesion, p.lesion_range_ms[0], p.search_range_ms[0])
        high = np.where(on_lesion, p.lesion_range_ms[1], p.search_range_ms[1])
        return np.clip(median * np.exp(sigma * self.rng.standard_normal(len(dwell))), low, high)


def _lesion_list(image: np.ndarray, anatomy: dict[str, np.ndarray], lesions: dict[str, np.ndarray],
                 params: GazeParams) -> list[_Lesion]:
    scores = conspicuity(image, anatomy, lesions, params)
    out = []
    for name, mask in lesions.items():
        pixels = _coords(mask)
        if not len(pixels):
            continue
        step = max(1, len(pixels) // _MAX_DISTANCE_POINTS)
        out.append(_Lesion(name, pixels, pixels[::step], scores[name]))
    return out


def simulate_fixations(rng: np.random.Generator, image: np.ndarray, anatomy: dict[str, np.ndarray],
                       lesions: dict[str, np.ndarray], size: int, params: GazeParams = DEFAULT_PARAMS
                       ) -> np.ndarray:
    """One simulated read of a film: [N, 4] float64 (start ms, end ms, x px, y px), x and y clipped to the image."""
    p = params
    px_per_deg = size / p.film_width_deg
    regions = _regions(anatomy, px_per_deg, p)
    reader = _Reader(rng, _lesion_list(image, anatomy, lesions, p), px_per_deg, p)

    # global impression: one look near the centre; very conspicuous lesions are caught in peripheral vision
    centre = np.array([size / 2, size / 2]) + rng.normal(0, p.centre_sd_deg * px_per_deg, 2)
    reader.fixate(centre)
    draws = rng.random(len(reader.lesions))
    for lesion, u in sorted(zip(reader.lesions, draws, strict=True), key=lambda item: -item[0].conspicuity):
        if u < lesion.conspicuity ** p.global_power * reader.factor(lesion):
            reader.examine(lesion)

    # systematic search, region by region
    order = list(_STRATEGIES[int(rng.integers(len(_STRATEGIES)))])
    if rng.random() < p.mirror_probability:  # start with the patient's left lung (the image's right)
        order = [name.replace("R", "#").replace("L", "R").replace("#", "L") if name[0] in "RL" else name
                 for name in order]
    thoroughness = rng.lognormal(0.0, p.thoroughness_sigma)
    counts = rng.poisson([regions[name].mean_fixations * thoroughness if name in regions else 0.0 for name in order])
    for name, count in zip(order, counts, strict=True):
        if name not in regions:
            continue
        count = max(1, int(count))
        if reader.satisfied:
            count = max(1, int(rng.binomial(count, p.sos_search_factor)))
        reader.search(regions[name], count)

    # a last look back at what was found
    found = [lesion for lesion in reader.lesions if lesion.found]
    draws = rng.random(len(found))
    for lesion, u in zip(found, draws, strict=True):
        if u < p.revisit_gain * lesion.conspicuity:
            for point in lesion.pixels[rng.integers(0, len(lesion.pixels), 1 + int(rng.integers(2)))]:
                reader.fixate(point, lesion)

    durations = reader.durations()
    points = np.asarray(reader.points, np.float64).reshape(-1, 2)
    points += rng.normal(0.0, p.jitter_deg * px_per_deg, points.shape)
    np.clip(points, 0, size - 1, out=points)
    amplitudes = np.hypot(*np.diff(points, axis=0).T) / px_per_deg
    gaps = p.saccade_base_ms + p.saccade_ms_per_deg * amplitudes
    starts = rng.uniform(*p.start_latency_ms) + np.concatenate([[0.0], np.cumsum(durations[:-1] + gaps)])
    keep = starts < p.max_read_ms
    keep[0] = True
    return np.column_stack([starts, starts + durations, points])[keep]
