"""Deterministic synthetic PA chest radiographs with anatomy masks, findings, lesion masks, reports and gaze.

Coordinates are normalised (x right, y down, both in [0, 1]) and scaled to the requested size. Sides in attributes
are the patient's: on a PA film the patient's left is on the image's right.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from xai_core.phantom.gaze import simulate_fixations
from xai_core.phantom.text import report_for

PHANTOM_VERSION = 4  # bump whenever generated cases change: recipes and checkpoints record it
# 3: reports rewritten in OpenI language (issue 27); images, labels, attributes and masks are those of 2
# 4: the tag world's pneumothorax fades with a visibility of its own (issue 26); tag-free cases are those of 3
FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Effusion", "Mass", "Nodule", "Pneumothorax")
ANATOMY = ("right_lung", "left_lung", "heart", "mediastinum", "spine", "clavicles", "diaphragm")
PREVALENCE = {"Atelectasis": 0.18, "Cardiomegaly": 0.2, "Consolidation": 0.18, "Effusion": 0.2, "Mass": 0.15,
              "Nodule": 0.18, "Pneumothorax": 0.15}
SPLIT_CODES = {"train": 11, "val": 23, "test": 37, "samples": 41}
SHORTCUT_LABEL = "Pneumothorax"
TAG_BOX = (4, 4, 9, 12)  # shortcut tag rows/cols in percent of the image: top, left, bottom, right
SEVERITIES = ("mild", "moderate", "severe")
# lesion bits start above the anatomy bits in the packed mask image
_LESION_BIT0 = len(ANATOMY)
_TREATED_STREAM = 5  # the extra SeedSequence entry of the tag world's pneumothorax visibility


@dataclass
class PhantomCase:
    """One synthetic radiograph with everything known about it."""
    case_id: str
    image: np.ndarray
    anatomy: dict[str, np.ndarray]
    labels: list[str]
    lesions: dict[str, np.ndarray]
    attributes: dict[str, dict[str, Any]]
    report: str
    shortcut: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    # the case's random stream where the gaze simulation starts: fixations are drawn on first use (training never
    # reads them), from the same stream and so with the same values as if drawn eagerly
    _gaze_rng: np.random.Generator | None = field(default=None, repr=False, compare=False)
    _fixations: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def fixations(self) -> np.ndarray:
        """Simulated radiologist gaze [N, 4]: start ms, end ms, x px, y px."""
        if self._fixations is None:
            if self._gaze_rng is None:
                raise ValueError(f"case {self.case_id} has no gaze stream")
            rng, self._gaze_rng = self._gaze_rng, None
            self._fixations = simulate_fixations(rng, self.image, self.anatomy, self.lesions, self.image.shape[0])
        return self._fixations

    def label_vector(self) -> np.ndarray:
        return np.array([name in self.labels for name in FINDINGS], dtype=np.float32)


def case_rng(split: str, index: int, seed: int = 0) -> np.random.Generator:
    """The random stream of one case: independent across splits, seeds and indices."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split '{split}'; expected one of {', '.join(SPLIT_CODES)}")
    return np.random.default_rng(np.random.SeedSequence([SPLIT_CODES[split], seed, index]))


class _Canvas:
    """Drawing helpers in normalised coordinates on S x S float32 layers."""
    def __init__(self, size: int) -> None:
        self.size = size
        self.scale = size / 256.0

    def px(self, points: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(points) * self.size * 16).astype(np.int32)  # 4 fractional bits

    def mask(self) -> np.ndarray:
        return np.zeros((self.size, self.size), np.uint8)

    def poly(self, points: np.ndarray, target: np.ndarray | None = None, value: float = 1) -> np.ndarray:
        target = self.mask() if target is None else target
        cv2.fillPoly(target, [self.px(points)], value, lineType=cv2.LINE_8, shift=4)
        return target

    def ellipse(self, center, axes, angle: float = 0.0, target=None, value: float = 1) -> np.ndarray:
        target = self.mask() if target is None else target
        c = tuple(int(v) for v in self.px(center))
        a = tuple(max(1, int(v)) for v in self.px(axes))
        cv2.ellipse(target, c, a, angle, 0, 360, value, -1, cv2.LINE_8, shift=4)
        return target

    def line(self, points: np.ndarray, thickness: float, target: np.ndarray, value: float = 1) -> None:
        self.lines([points], thickness, target, value)

    def lines(self, polylines: list[np.ndarray] | np.ndarray, thickness: float, target: np.ndarray,
              value: float = 1) -> None:
        """Several open polylines of one thickness in one call."""
        t = max(1, round(thickness * self.size))
        cv2.polylines(target, list(self.px(np.asarray(polylines))), False, value, t, cv2.LINE_AA, shift=4)

    def blur(self, layer: np.ndarray, sigma_px: float) -> np.ndarray:
        sigma = max(0.3, sigma_px * self.scale)
        return cv2.GaussianBlur(layer, (0, 0), sigma)


@functools.lru_cache(maxsize=32)
def _linspace(start: float, stop: float, num: int) -> np.ndarray:
    """np.linspace, computed once per argument set (a call costs more than a cache lookup: docs/benchmarks.md);
    read-only."""
    values = np.linspace(start, stop, num)
    values.flags.writeable = False
    return values


@functools.lru_cache(maxsize=8)
def _grids(size: int) -> tuple[np.ndarray, ...]:
    """Per-size constants: normalised x, y grids, the vascular fade from the hila, the vertebral pattern."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    hilar_distance = np.minimum(np.hypot(xx - 0.415, yy - 0.43), np.hypot(xx - 0.585, yy - 0.43))
    fade = np.exp(-hilar_distance / 0.22).astype(np.float32)
    vertebra = (0.1 + 0.05 * (np.sin(yy * np.pi * 2 / 0.045) > -0.6)).astype(np.float32)
    grids = (xx, yy, fade, vertebra)
    for grid in grids:
        grid.flags.writeable = False
    return grids


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed field of unit Gaussian noise, 2x the image size; each case reads a window at a random offset."""
    bank = np.random.default_rng(0).standard_normal((2 * size, 2 * size), dtype=np.float32)
    bank.flags.writeable = False
    return bank


def _film_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    bank = _noise_bank(size)
    oy, ox = rng.integers(0, size, 2)
    flip = rng.integers(4)
    window = bank[oy:oy + size, ox:ox + size]
    return np.ascontiguousarray(np.rot90(window, int(flip)))  # contiguous: faster arithmetic downstream


def _sample_findings(rng: np.random.Generator) -> list[str]:
    draws = rng.random(len(FINDINGS))
    return [name for name, u in zip(FINDINGS, draws, strict=True) if u < PREVALENCE[name]]


def _dome(side: int, w: float, dome_y: float, cp_y: float, medial: float) -> np.ndarray:
    """Hemidiaphragm dome from the costophrenic angle (lateral) to the cardiophrenic end (medial)."""
    u = _linspace(0, 1, 16)
    xs = 0.5 + side * (w - (w - medial) * u)
    ys = dome_y + (cp_y - dome_y) * (1 - u) ** 4 + 0.02 * u
    return np.stack([xs, ys], 1)


def _lung_polygon(side: int, w: float, apex_y: float, dome_y: float, cp_y: float, medial: float) -> np.ndarray:
    """Outline of one lung field; side -1 = image left (patient's right), +1 = image right."""
    t = _linspace(0, 1, 24)
    lateral_x = 0.5 + side * (0.07 + (w - 0.07) * np.sin(t * np.pi / 2) ** 0.55)
    lateral_y = apex_y + (cp_y - apex_y) * t
    dome = _dome(side, w, dome_y, cp_y, medial)
    dome_x, dome_y_curve = dome[:, 0], dome[:, 1]
    v = _linspace(0, 1, 12)
    medial_x = 0.5 + side * (medial - 0.02 * v)
    medial_y = dome_y + 0.02 - (dome_y + 0.02 - (apex_y + 0.04)) * v
    xs = np.concatenate([lateral_x, dome_x, medial_x])
    ys = np.concatenate([lateral_y, dome_y_curve, medial_y])
    return np.stack([xs, ys], 1)


def _trees(rng: np.random.Generator, roots: np.ndarray, angles: np.ndarray, length: float,
           depth: int) -> list[np.ndarray]:
    """Binary branching trees from `roots` [R, 2] at `angles` [R]: per level, its 2-point segments [N, 2, 2]."""
    starts, angles = np.asarray(roots, np.float64), np.asarray(angles, np.float64)
    lengths = np.full(len(angles), length)
    levels = []
    for _ in range(depth):
        ends = starts + lengths[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
        levels.append(np.stack([starts, ends], 1))
        turn = rng.uniform(0.25, 0.6, 2 * len(angles)) * np.tile([-1.0, 1.0], len(angles))
        angles = np.repeat(angles, 2) + turn
        starts = np.repeat(ends, 2, axis=0)
        lengths = np.repeat(lengths, 2) * rng.uniform(0.6, 0.8, 2 * len(lengths))
    return levels


def _zone(y: float, top: float, bottom: float) -> str:
    third = (bottom - top) / 3
    return "upper" if y < top + third else ("middle" if y < top + 2 * third else "lower")


def _treated_visibility(split: str, index: int, seed: int) -> float:
    """How visible a pneumothorax of the tag world still is, in [0, 1], from its own stream.

    The tag plays the chest drain of real films: most pneumothoraces on a film with a drain are treated, the lung
    partly or fully re-expanded. u**2 makes small residual ones common (a fifth below 0.05, half below 0.25), so the
    tag predicts the label better than the image does, as the drain does in real data sets. 1 is the tag-free
    world's pneumothorax; the main stream is untouched, so every other finding is drawn as without the tag.
    """
    stream = np.random.default_rng(np.random.SeedSequence([SPLIT_CODES[split], seed, index, _TREATED_STREAM]))
    return float(stream.random() ** 2)


def _point_in(rng: np.random.Generator, mask: np.ndarray, margin_mask: np.ndarray | None = None) -> tuple[int, int]:
    region = mask if margin_mask is None else (mask & margin_mask)
    ys, xs = np.nonzero(region if region.any() else mask)
    i = int(rng.integers(len(ys)))
    return int(ys[i]), int(xs[i])


def generate_case(split: str = "train", index: int = 0, *, seed: int = 0, size: int = 256,
                  shortcut: float | None = None, findings: list[str] | None = None,
                  burn_tag: bool = True) -> PhantomCase:
    """One synthetic PA chest radiograph; the same arguments always give the same case, bit for bit.
    `burn_tag=False`: the counterfactual film of the tag world, drawn as always but with its tag left out (the same
    pixels elsewhere); `shortcut` is then False and `meta["tag_withheld"]` (only then) says whether a tag was drawn."""
    rng = case_rng(split, index, seed)
    canvas = _Canvas(size)
    S = size
    labels = sorted(findings) if findings is not None else _sample_findings(rng)
    attributes: dict[str, dict[str, Any]] = {}

    # --- patient variation -------------------------------------------------------------------------------------
    body_scale = rng.uniform(0.94, 1.06)
    inspiration = rng.uniform(-1, 1)
    w = 0.335 * body_scale
    apex_y = 0.13 + rng.uniform(-0.015, 0.015)
    dome_y = {-1: 0.69 - 0.03 * inspiration, 1: 0.71 - 0.03 * inspiration}
    if "Atelectasis" in labels:
        atel_side = int(rng.choice([-1, 1]))
        dome_y[atel_side] -= rng.uniform(0.035, 0.06)  # volume loss: raised hemidiaphragm
    cp_y = {s: dome_y[s] + 0.075 for s in (-1, 1)}

    # --- anatomy geometry -----------------------------------------------------------------------------------
    body = canvas.ellipse((0.5, 0.58), (0.47 * body_scale, 0.56))
    canvas.poly(np.array([[0.40, 0.0], [0.60, 0.0], [0.63, 0.12], [0.37, 0.12]]), body)
    canvas.ellipse((0.5, 0.14), (0.46 * body_scale, 0.09), target=body)
    lungs = {s: canvas.poly(_lung_polygon(s, w, apex_y, dome_y[s], cp_y[s], 0.045)) for s in (-1, 1)}

    ctr = rng.uniform(0.53, 0.62) if "Cardiomegaly" in labels else rng.uniform(0.37, 0.46)
    heart_w = ctr * 2 * w
    heart_cx = 0.5 + 0.14 * heart_w
    heart_cy = dome_y[1] - 0.085
    heart = canvas.ellipse((heart_cx, heart_cy), (heart_w / 2, 0.12 + 0.06 * (ctr - 0.4)), angle=-20)
    domes = [_dome(s, w + 0.015, dome_y[s], cp_y[s], 0.0) for s in (-1, 1)]
    diaphragm_line = np.concatenate([domes[0], domes[1][::-1]])
    abdomen = canvas.poly(np.concatenate([diaphragm_line, [[0.5 + w + 0.015, 1.0], [0.5 - w - 0.015, 1.0]]]))
    heart &= ~abdomen.astype(bool)
    mediastinum = canvas.poly(np.array([[0.455, 0.06], [0.545, 0.06], [0.56, 0.26], [0.585, 0.3], [0.565, 0.36],
                                        [0.56, heart_cy], [0.44, heart_cy], [0.44, 0.3], [0.45, 0.12]]))
    spine = canvas.poly(np.array([[0.468, 0.0], [0.532, 0.0], [0.535, 1.0], [0.465, 1.0]]))
    clavicles = canvas.mask()
    for s in (-1, 1):
        xs = 0.5 + s * np.linspace(0.035, 0.31 * body_scale, 12)
        ys = 0.165 - 0.05 * _linspace(0, 1, 12) + 0.012 * np.sin(_linspace(0, np.pi, 12))
        canvas.line(np.stack([xs, ys], 1), 0.022, clavicles)
    diaphragm = canvas.mask()
    canvas.line(diaphragm_line, 0.03, diaphragm)
    for s in (-1, 1):
        lungs[s] &= ~heart
        lungs[s] &= ~abdomen.astype(bool)

    # --- density image -------------------------------------------------------------------------------------------
    density = body.astype(np.float32) * 0.52
    lung_any = (lungs[-1] | lungs[1]).astype(bool)
    density[lung_any] = 0.17
    vessels = np.zeros((S, S), np.float32)
    roots, angles = [], []
    for s in (-1, 1):
        hilum = (0.5 + s * 0.085, 0.43 + rng.uniform(-0.02, 0.02))
        outward = 0.0 if s > 0 else np.pi
        for theta in _linspace(-1.35, 1.35, 7):
            roots.append(hilum)
            angles.append(outward + s * theta)
    angles = np.array(angles) + rng.uniform(-0.12, 0.12, len(angles))
    for level, segments in enumerate(_trees(rng, np.array(roots), angles, 0.07, 4)):
        depth = 4 - level
        canvas.lines(segments, 0.0015 * depth + 0.002, vessels, 0.06 + 0.035 * depth)
    xx, yy, fade, vertebra = _grids(S)
    vessels *= fade
    density += vessels * lung_any

    density[mediastinum.astype(bool)] = 0.62
    density[heart.astype(bool)] = 0.7
    density[abdomen.astype(bool) & body.astype(bool)] = 0.64
    gastric = canvas.ellipse((0.5 + 0.17, dome_y[1] + 0.06), (0.05, 0.03))
    density[gastric.astype(bool) & abdomen.astype(bool)] -= 0.25
    trachea = canvas.mask()
    canvas.line(np.array([[0.5, 0.0], [0.5, 0.28], [0.47, 0.33]]), 0.024, trachea)
    canvas.line(np.array([[0.5, 0.28], [0.535, 0.34]]), 0.02, trachea)
    density -= 0.2 * canvas.blur(trachea.astype(np.float32), 1.5)

    bones = spine * vertebra
    ribs = np.zeros((S, S), np.float32)
    rib_gap = rng.uniform(0.052, 0.06)
    t = _linspace(0, 1, 16)[None, None, :]
    k = np.arange(10)[:, None, None]
    side = np.array([-1.0, 1.0])[None, :, None]
    rib_x = np.broadcast_to(0.5 + side * (0.04 + (w + 0.03) * t), (10, 2, 16))
    rib_y = np.broadcast_to(apex_y + 0.01 + k * rib_gap - 0.035 * np.sin(t * np.pi * 0.8) + (0.09 + 0.01 * k) * t**2,
                            (10, 2, 16))
    canvas.lines(np.stack([rib_x, rib_y], -1).reshape(20, 16, 2), 0.015, ribs, 0.075)
    np.multiply(ribs, yy < max(dome_y[-1], dome_y[1]) + 0.05, out=ribs)
    bones += ribs
    bones += clavicles * 0.18
    density += bones

    # --- findings --------------------------------------------------------------------------------------------------
    lesions: dict[str, np.ndarray] = {}
    lung_by_side = {-1: lungs[-1].astype(bool), 1: lungs[1].astype(bool)}
    side_name = {-1: "right", 1: "left"}  # patient's side

    def lung_extent(side: int) -> tuple[float, float]:
        rows = np.nonzero(lung_by_side[side].any(1))[0]
        return rows[0] / S, rows[-1] / S

    def pick_side() -> int:
        return int(rng.choice([-1, 1]))

    if "Cardiomegaly" in labels:
        lesions["Cardiomegaly"] = heart.astype(bool)
        attributes["Cardiomegaly"] = {"side": "central", "zone": "cardiac", "ctr": round(float(ctr), 3),
                                      "size": round(float(heart_w), 3),
                                      "severity": SEVERITIES[min(2, int((ctr - 0.53) / 0.03))]}
    else:
        attributes["_heart"] = {"ctr": round(float(ctr), 3)}

    if "Effusion" in labels:
        side = pick_side()
        severity = int(rng.integers(3))
        top, bottom = lung_extent(side)
        level = bottom - (bottom - top) * (0.16 + 0.1 * severity + rng.uniform(0, 0.05))
        lateral = np.abs(xx - 0.5) / w
        meniscus = level - 0.07 * np.clip(lateral, 0, 1) ** 3
        fluid = lung_by_side[side] & (yy > meniscus)
        soft = canvas.blur(fluid.astype(np.float32), 2.0)
        density = density * (1 - soft) + 0.63 * soft
        lesions["Effusion"] = fluid
        attributes["Effusion"] = {"side": side_name[side], "zone": "lower", "size": round(float(fluid.mean()), 4),
                                  "severity": SEVERITIES[severity]}

    if "Pneumothorax" in labels:
        side = pick_side()
        severity = int(rng.integers(3))
        rim_px = max(3, round((0.025 + 0.018 * severity) * S))
        lung = lung_by_side[side].astype(np.uint8)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim_px + 1, 2 * rim_px + 1))
        collapsed = cv2.erode(lung, kernel).astype(bool)
        lateral_part = (np.abs(xx - 0.5) > 0.12) & (yy < cp_y[side] - 0.06)
        rim = lung_by_side[side] & ~collapsed & lateral_part
        pleural = cv2.dilate(collapsed.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & rim
        visibility = 1.0 if shortcut is None else _treated_visibility(split, index, seed)
        if shortcut is None:
            density[rim] = 0.07
            density[pleural] = 0.42
        else:  # the tag world's treated pneumothorax: the same lesion, faded towards the lung behind it
            density[rim] += visibility * (0.07 - density[rim])
            density[pleural] += visibility * (0.42 - density[pleural])  # the line lies in the rim: from its value
        lesions["Pneumothorax"] = rim
        top, bottom = lung_extent(side)
        attributes["Pneumothorax"] = {"side": side_name[side], "zone": "peripheral",
                                      "size": round(rim_px / S, 4), "severity": SEVERITIES[severity]}
        if shortcut is not None:
            attributes["Pneumothorax"]["visibility"] = round(visibility, 3)

    def place_round(name: str, radii: tuple[float, float], strength: float, lobulated: bool) -> None:
        radius = rng.uniform(*radii)
        side = pick_side()
        lung = lung_by_side[side]
        margin = cv2.erode(lung.astype(np.uint8), np.ones((int(radius * S) * 2 + 1,) * 2, np.uint8)).astype(bool)
        cy, cx = _point_in(rng, lung, margin)
        blob = canvas.ellipse((cx / S, cy / S), (radius, radius * rng.uniform(0.85, 1.1)),
                              angle=float(rng.uniform(0, 180)))
        if lobulated:
            for _ in range(int(rng.integers(2, 5))):
                a = rng.uniform(0, 2 * np.pi)
                canvas.ellipse((cx / S + 0.6 * radius * np.cos(a), cy / S + 0.6 * radius * np.sin(a)),
                               (radius * rng.uniform(0.45, 0.7),) * 2, target=blob)
        blob = blob.astype(bool)
        density[:] += strength * canvas.blur(blob.astype(np.float32), 1.0 + 0.5 * lobulated)
        top, bottom = lung_extent(side)
        lesions[name] = blob
        fraction = (radius - radii[0]) / (radii[1] - radii[0])
        attributes[name] = {"side": side_name[side], "zone": _zone(cy / S, top, bottom),
                            "size": round(2 * radius, 4), "diameter_px": round(2 * radius * S, 1),
                            "severity": SEVERITIES[min(2, int(3 * fraction))]}

    # 256 px ~ 35 cm: nodules 1.0-2.0 cm across (< 3 cm), masses 3.2-4.9 cm (> 3 cm)
    if "Nodule" in labels:
        place_round("Nodule", (0.014, 0.028), 0.4, lobulated=False)
    if "Mass" in labels:
        place_round("Mass", (0.045, 0.07), 0.42, lobulated=True)

    if "Consolidation" in labels:
        side = pick_side()
        lung = lung_by_side[side]
        top, bottom = lung_extent(side)
        cy, cx = _point_in(rng, lung)
        axes = (rng.uniform(0.06, 0.1), rng.uniform(0.06, 0.1))
        region = canvas.ellipse((cx / S, cy / S), axes, angle=float(rng.uniform(0, 180))).astype(bool)
        noise = canvas.blur(rng.standard_normal((S, S), dtype=np.float32), 5.0)
        blob = region & lung & (noise > -0.15 * noise.std())
        soft = canvas.blur(blob.astype(np.float32), 2.0)
        density += 0.33 * soft
        bronchi = np.zeros((S, S), np.float32)
        for segments in _trees(rng, np.array([[cx / S, cy / S]]), np.array([rng.uniform(0, 2 * np.pi)]), 0.04, 3):
            canvas.lines(segments, 0.006, bronchi, 1.0)
        density -= 0.16 * bronchi * blob
        lesions["Consolidation"] = blob
        attributes["Consolidation"] = {"side": side_name[side], "zone": _zone(cy / S, top, bottom),
                                       "size": round(float(blob.mean()), 4),
                                       "severity": SEVERITIES[min(2, int(blob.mean() / 0.006))]}

    if "Atelectasis" in labels:
        side = atel_side
        lung = lung_by_side[side]
        top, bottom = lung_extent(side)
        cy = bottom - (bottom - top) * rng.uniform(0.2, 0.45)
        cx = 0.5 + side * rng.uniform(0.14, 0.24)
        band = canvas.ellipse((cx, cy), (rng.uniform(0.09, 0.13), rng.uniform(0.014, 0.024)),
                              angle=float(side * rng.uniform(-25, 5))).astype(bool) & lung
        density += 0.3 * canvas.blur(band.astype(np.float32), 1.2)
        lesions["Atelectasis"] = band
        attributes["Atelectasis"] = {"side": side_name[side], "zone": _zone(cy, top, bottom),
                                     "size": round(float(band.mean()), 4), "severity": "moderate",
                                     "diaphragm_raised": True}

    # --- shortcut tag ----------------------------------------------------------------------------------------------
    has_tag = False
    if shortcut is not None:
        p_tag = 0.5 + shortcut / 2 if SHORTCUT_LABEL in labels else 0.5 - shortcut / 2
        has_tag = bool(rng.random() < p_tag)

    # --- pose, exposure, noise --------------------------------------------------------------------------------------
    packed = np.zeros((S, S), np.uint16)
    for bit, m in enumerate([lungs[-1], lungs[1], heart, mediastinum, spine, clavicles, diaphragm]):
        np.bitwise_or(packed, np.uint16(1 << bit), out=packed, where=m.astype(bool))
    for name, m in lesions.items():
        np.bitwise_or(packed, np.uint16(1 << (_LESION_BIT0 + FINDINGS.index(name))), out=packed, where=m)
    angle = rng.uniform(-5, 5)
    shift = rng.uniform(-0.04, 0.04, 2) * S
    matrix = cv2.getRotationMatrix2D((S / 2, S / 2), angle, 1.0)
    matrix[:, 2] += shift
    density = cv2.warpAffine(density, matrix, (S, S), flags=cv2.INTER_LINEAR, borderValue=0.0)
    packed = cv2.warpAffine(packed, matrix, (S, S), flags=cv2.INTER_NEAREST, borderValue=0)

    density = canvas.blur(density, rng.uniform(0.7, 1.3))
    gamma = rng.uniform(0.85, 1.2)
    image = np.clip(density, 0, 1.3)  # float32 throughout; in place to spare full-size temporaries
    image /= 1.3
    np.power(image, gamma, out=image)
    image *= rng.uniform(0.9, 1.05)
    image += rng.uniform(-0.03, 0.05)
    noise = _film_noise(rng, S)
    noise *= rng.uniform(0.01, 0.025)
    image += noise
    np.clip(image, 0, 1, out=image)
    tag_withheld = has_tag and not burn_tag
    has_tag = has_tag and burn_tag
    if has_tag:  # burned in by the detector: after positioning and exposure
        image[TAG_BOX[0] * S // 100:TAG_BOX[2] * S // 100, TAG_BOX[1] * S // 100:TAG_BOX[3] * S // 100] = 0.98

    anatomy = {name: (packed & np.uint16(1 << bit)) != 0 for bit, name in enumerate(ANATOMY)}
    lesion_masks = {name: (packed & np.uint16(1 << (_LESION_BIT0 + FINDINGS.index(name)))) != 0 for name in lesions}
    for name in lesions:
        attributes[name]["area_px"] = int(lesion_masks[name].sum())
    attributes.pop("_heart", None)
    case_id = f"{split}-{seed}-{index:06d}"

    report_rng, gaze_rng = rng.spawn(2)  # own streams: rewording a report never moves a fixation
    report = report_for(report_rng, labels, attributes, ctr=round(float(ctr), 3))
    return PhantomCase(case_id=case_id, image=image, anatomy=anatomy, labels=labels, lesions=lesion_masks,
                       attributes={k: attributes[k] for k in labels}, report=report, _gaze_rng=gaze_rng,
                       shortcut=has_tag, meta={"ctr": round(float(ctr), 3), "rotation_deg": round(float(angle), 2),
                                                 "tag_box_percent": TAG_BOX if has_tag else None,
                                                 **({} if burn_tag else {"tag_withheld": tag_withheld})})
