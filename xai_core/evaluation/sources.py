"""Where evaluation cases come from: a phantom split, or a folder with labels (and optional masks, boxes, gaze)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from xai_core.errors import InputError
from xai_core.imaging import load_radiograph, read_mask_png
from xai_core.metrics.gaze import read_fixations
from xai_core.models.cards import center_square
from xai_core.phantom import generate_case

PHANTOM_SPLITS = ("train", "val", "test")


@dataclass
class EvalCase:
    """One image with its ground truth, on the model's input grid."""

    case_id: str
    image: np.ndarray  # [S, S] in [0, 1]
    labels: list[str]
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # finding -> bool [S, S]
    fixations: np.ndarray | None = None  # [N, 3] x, y, duration on the [S, S] grid
    # source-image pixels the grid's side spans (the square crop), to scale the gaze kernel; None: drawn on the grid
    # (phantom), taken as gaze.NOMINAL_SOURCE_PX
    source_px: float | None = None


def phantom_cases(split: str, n: int, seed: int, size: int) -> Iterator[EvalCase]:
    """Cases 0..n-1 of a phantom split at `size` px, with their lesion masks and simulated fixations."""
    for index in range(n):
        case = generate_case(split, index, seed=seed, size=size)
        fixations = np.asarray(case.fixations, np.float32)
        gaze = np.stack([fixations[:, 2], fixations[:, 3], (fixations[:, 1] - fixations[:, 0]) / 1000], 1) \
            if len(fixations) else None
        yield EvalCase(case.case_id, case.image, list(case.labels), dict(case.lesions), gaze)


def _read_boxes(box_file: Path) -> dict[str, list[tuple[str, float, float, float, float]]]:
    """NIH BBox_List rows (image, finding, x, y, w, h) by image id."""
    boxes: dict[str, list[tuple[str, float, float, float, float]]] = {}
    if box_file.is_file():
        with box_file.open(newline="") as handle:
            for row in csv.reader(handle):
                if row and row[0] != "Image Index":
                    boxes.setdefault(Path(row[0]).stem, []).append((row[1], *map(float, row[2:6])))
    return boxes


# labels.csv layouts: ours (image, labels) and the NIH ChestX-ray14 Data_Entry file (Image Index, Finding Labels).
LABEL_COLUMNS = (("image", "labels"), ("Image Index", "Finding Labels"))


def label_columns(fieldnames: list[str] | None, source: Path) -> tuple[str, str]:
    """The (image, labels) column names of a labels.csv header; InputError naming the accepted layouts."""
    names = [name.strip() for name in fieldnames or []]
    for image, labels in LABEL_COLUMNS:
        if image in names and labels in names:
            return image, labels
    accepted = " or ".join(f"'{i}','{lab}'" for i, lab in LABEL_COLUMNS)
    raise InputError(f"{source.name} has the columns {', '.join(repr(n) for n in names) or 'none'}; expected "
                     f"{accepted} (labels separated by '|')")


def folder_cases(folder: Path, size: int, n: int | None = None) -> Iterator[EvalCase]:
    """labels.csv (image,labels, or NIH's Image Index,Finding Labels) + images/ (any supported format), optional
    masks/<id>_<finding>.png,
    fixations/<id>.csv (REFLACX, or MIMIC-EGD: the rows of DICOM_ID <id>) and an NIH BBox_List-style boxes csv
    (bboxes.csv); every image is centre-cropped to a square and resized to `size` px, as the model sees it."""
    with (folder / "labels.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is not None:
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
        image_column, labels_column = label_columns(reader.fieldnames, folder / "labels.csv")
        rows = list(reader)
    boxes = _read_boxes(folder / "bboxes.csv")
    for row in rows[:n]:
        image_id = Path(row[image_column]).stem
        matches = sorted((folder / "images").glob(f"{image_id}.*"))
        if not matches:
            continue
        radiograph = load_radiograph(matches[0])
        crop = center_square(*radiograph.pixels.shape)
        square = radiograph.pixels[crop.top:crop.top + crop.size, crop.left:crop.left + crop.size]
        image = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
        scale = size / crop.size

        def to_grid(mask: np.ndarray, crop=crop) -> np.ndarray:
            cut = mask[crop.top:crop.top + crop.size, crop.left:crop.left + crop.size].astype(np.uint8)
            return cv2.resize(cut, (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)

        labels = [x.strip() for x in (row[labels_column] or "").split("|") if x.strip() and x.strip() != "No Finding"]
        masks = {}
        for finding in labels:
            path = folder / "masks" / f"{image_id}_{finding}.png"
            if path.is_file():
                masks[finding] = to_grid(read_mask_png(path))
        for finding, x, y, w, h in boxes.get(image_id, []):
            box = np.zeros(radiograph.pixels.shape, bool)
            box[int(y):int(y + h), int(x):int(x + w)] = True
            masks[finding] = masks.get(finding, np.zeros((size, size), bool)) | to_grid(box)
        fixations = None
        gaze_file = folder / "fixations" / f"{image_id}.csv"
        if gaze_file.is_file():
            raw = read_fixations(gaze_file, dicom_id=image_id)
            fixations = np.stack([(raw[:, 0] - crop.left) * scale, (raw[:, 1] - crop.top) * scale, raw[:, 2]], 1)
        yield EvalCase(image_id, image.astype(np.float32), labels, masks, fixations, source_px=float(crop.size))


def cases_from(data: str, n: int, seed: int, size: int) -> Iterator[EvalCase]:
    """The cases of a data spec: `phantom:SPLIT` or a folder path (InputError for anything else)."""
    if data.startswith("phantom:"):
        split = data.split(":", 1)[1]
        if split not in PHANTOM_SPLITS:
            raise InputError(f"unknown phantom split '{split}'; use train, val or test")
        return phantom_cases(split, n, seed, size)
    folder = Path(data)
    if not (folder / "labels.csv").is_file():
        raise InputError(f"--data must be phantom:SPLIT or a folder with labels.csv; '{data}' has none")
    return folder_cases(folder, size, n)
