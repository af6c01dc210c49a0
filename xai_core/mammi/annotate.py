"""The MAMMI pipeline: probe activations -> representatives -> concept matching -> store (+ output-layer check)."""

from __future__ import annotations

import datetime
import io
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from xai_core.errors import InputError
from xai_core.imaging import load_radiograph
from xai_core.mammi.backends import ImageTextModel, load_backend
from xai_core.mammi.concepts import concept_set
from xai_core.mammi.match import BASE_PROMPT, CONCEPT_PROMPT, DEFAULT_BETA, concept_scores, select_concepts
from xai_core.mammi.select import DEFAULT_CAP, DEFAULT_PERCENTILE, representatives
from xai_core.mammi.store import NeuronRecord, write_annotation
from xai_core.mammi.validate import VALIDATION_SETS, CachedTexts, label_terms, validate_concept_sets
from xai_core.models import load_model
from xai_core.models.base import InputSpec, ModelHandle, preprocess
from xai_core.phantom import generate_case
from xai_core.workers import WorkerPool, check_backend, start_workers

LAYERS = ("features", "output")
ACTIVATION_KINDS = {"features": "features-relu-mean", "output": "output-sigmoid"}  # what a resume cache holds
ANNOTATIONS_DIR = Path(__file__).resolve().parents[2] / "assets" / "mammi"
THUMBNAIL_SIZE = 64
THUMBNAILS_PER_NEURON = 12  # what the concept browser shows; keeps the bundled annotation small


def default_path(model: str, layer: str, vlm: str, concepts: str) -> Path:
    """Where the annotation of (model, layer, vlm, concept set) lives by default."""
    safe = "-".join(part.replace(":", "_").replace("/", "_") for part in (model, layer, vlm, Path(concepts).stem))
    return ANNOTATIONS_DIR / f"{safe}.sqlite"


def bundled_annotation(model: str, layer: str = "features") -> Path | None:
    """The precomputed annotation of a model's layer (demo-clip, demo concept set) in assets/, if there is one."""
    path = default_path(model, layer, "demo-clip", "demo")
    return path if path.is_file() else None


# --- probing sets ------------------------------------------------------------------------------------------------
@dataclass
class Probe:
    """A probing set: ids, and a loader of grey [0, 1] pixels at a size for any subset of them."""
    name: str
    ids: list[str]
    load: Callable[[list[int], int], torch.Tensor]  # (indices, size) -> [B, 1, size, size]


RADIOGRAPH_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm"}


def _phantom_split(spec: str) -> str:
    return spec.split(":", 1)[1] or "train"


def _phantom_pixels(split: str, indices: list[int], size: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([generate_case(split, i, size=size).image for i in indices]))[:, None]


def _file_pixels(files: list[Path], size: int) -> torch.Tensor:
    spec01 = InputSpec(1, size, (0.0, 1.0))
    return torch.cat([preprocess(load_radiograph(path), spec01)[0][None] for path in files])


def probe_set(spec: str, n: int) -> Probe:
    """`phantom:<split>` (the first n cases of a phantom split) or a folder of radiographs (the first n files)."""
    if spec.startswith("phantom:"):
        split = _phantom_split(spec)
        generate_case(split, 0, size=16)  # fails early on an unknown split
        return Probe(spec, [f"{split}-0-{i:06d}" for i in range(n)],
                     lambda indices, size: _phantom_pixels(split, indices, size))
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(f"probe '{spec}': expected phantom:<split> or a folder of radiographs")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in RADIOGRAPH_SUFFIXES)[:n]
    if not files:
        raise FileNotFoundError(f"no radiographs (png, jpeg, tiff, dcm) under {folder}")
    return Probe(str(folder), [str(p.relative_to(folder)) for p in files],
                 lambda indices, size: _file_pixels([files[i] for i in indices], size))


def probe_images(spec: str, ids: list[str], size: int) -> torch.Tensor:
    """Grey [0, 1] pixels [B, 1, size, size] of probing images named by the ids an annotation stores, loaded as the
    annotation run loaded them. InputError for an id that is not of this probe or a file that is not here."""
    if spec.startswith("phantom:"):
        split = _phantom_split(spec)
        prefix = f"{split}-0-"
        indices = []
        for image_id in ids:
            number = image_id[len(prefix):]
            if not image_id.startswith(prefix) or not number.isdigit():
                raise InputError(f"'{image_id}' is not an image of the probing set {spec}")
            indices.append(int(number))
        return _phantom_pixels(split, indices, size) if ids else torch.zeros((0, 1, size, size))
    folder = Path(spec).resolve()
    files = []
    for image_id in ids:
        path = (folder / image_id).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise InputError(f"the probing image '{image_id}' is not under {spec} on this machine")
        files.append(path)
    return _file_pixels(files, size) if ids else torch.zeros((0, 1, size, size))


# --- activations -------------------------------------------------------------------------------------------------
def to_model_range(pixels: torch.Tensor, handle: ModelHandle) -> torch.Tensor:
    low, high = handle.card.input.value_range
    return (pixels * (high - low) + low).expand(-1, handle.card.input.channels, -1, -1)


def weights_tag(handle: ModelHandle) -> str:
    """What identifies a model's weights in cache keys: the sha256 of its weights file ("random" / "none" without)."""
    return str(handle.card.provenance.get("weights_sha256") or ("random" if handle.random_weights else "none"))


def feature_maps(handle: ModelHandle, x: torch.Tensor, layer_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, L], ReLU'd activation maps of a layer [B, C, h, w]) in one forward pass."""
    captured: dict[str, torch.Tensor] = {}
    hook = handle.layer(layer_path).register_forward_hook(lambda _m, _i, out: captured.__setitem__("maps", out))
    try:
        logits = handle.module(x.to(handle.device))
    finally:
        hook.remove()
    return logits, F.relu(captured["maps"])


def layer_activations(handle: ModelHandle, x: torch.Tensor, layer: str) -> torch.Tensor:
    """One number per neuron per image, after the neuron's activation function: [B, K]. features: the card's feature
    layer after its ReLU, pooled per channel; output: each label's sigmoid probability. On logits, p=93 leaves the
    output neurons of demo 1-22 representatives, mostly multi-finding outliers; on probabilities every confident
    positive qualifies and the cap (50) applies (hit rates of both: docs/models.md)."""
    with torch.inference_mode():
        if layer == "output":
            return torch.sigmoid(handle.module(x.to(handle.device)).float()).cpu()
        _, maps = feature_maps(handle, x, handle.card.feature_layer)
        return maps.mean((2, 3)).float().cpu()


def head_weights(handle: ModelHandle, layer: str, n_neurons: int) -> np.ndarray | None:
    """[L, K]: the weight of each neuron in each label's logit (linear heads only), else None."""
    if layer == "output":
        return np.eye(n_neurons, dtype=np.float32)
    head = getattr(handle.module, "classifier", None)
    if not isinstance(head, torch.nn.Linear) or head.in_features != n_neurons:
        return None
    weight = head.weight.detach().float().cpu()
    outputs = getattr(handle.module, "outputs", None)
    return (weight.index_select(0, outputs.cpu()) if outputs is not None else weight).numpy()


def _batches(count: int, size: int, start: int = 0) -> Iterator[list[int]]:
    for first in range(start, count, size):
        yield list(range(first, min(count, first + size)))


_PROBE_WORKER: dict[str, Any] = {}


def _start_probe_worker(model: str, device: str, allow_random_weights: bool, probe: str, n: int, layer: str,
                        threads: int) -> None:
    torch.set_num_threads(threads)
    _PROBE_WORKER.update(handle=load_model(model, device, allow_random_weights=allow_random_weights),
                         probe=probe_set(probe, n), layer=layer)


def _probe_batch(indices: list[int]) -> np.ndarray:
    handle, probe = _PROBE_WORKER["handle"], _PROBE_WORKER["probe"]
    pixels = to_model_range(probe.load(indices, handle.card.input.size), handle)
    return layer_activations(handle, pixels, _PROBE_WORKER["layer"]).numpy()


def probe_activations(handle: ModelHandle, probe: Probe, layer: str, *, batch_size: int = 64,
                      cache: Path | None = None, progress: bool = True, pool: WorkerPool | None = None
                      ) -> np.ndarray:
    """Activations of every neuron on every probe image [N, K], resumable from `cache` (saved every batch); with
    `pool` (workers started by `_start_probe_worker`) the batches run on its workers, in the same order."""
    n = len(probe.ids)
    done, acts = 0, None
    # a cache is only reused for the same weights: a retrained model of the same name responds differently
    weights = weights_tag(handle)
    if cache is not None and cache.is_file():
        stored = np.load(cache, allow_pickle=False)
        same_kind = "layer" in stored.files and str(stored["layer"]) == ACTIVATION_KINDS[layer]
        same_weights = "weights" in stored.files and str(stored["weights"]) == weights
        if same_kind and same_weights and list(stored["ids"]) == probe.ids[:len(stored["ids"])]:
            acts, done = stored["acts"], int(stored["done"])
    bar = tqdm(total=n, initial=done, desc=f"activations ({layer})", unit="img", disable=not progress)
    for indices, rows in _batch_rows(handle, probe, layer, _batches(n, batch_size, done), pool):
        if acts is None:
            acts = np.zeros((n, rows.shape[1]), np.float32)
        acts[indices] = rows
        done = indices[-1] + 1
        if cache is not None:
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, acts=acts, done=done, ids=np.array(probe.ids[:done]), layer=ACTIVATION_KINDS[layer],
                     weights=weights)
            tmp.replace(cache)
        bar.update(len(indices))
    bar.close()
    return acts


def _batch_rows(handle: ModelHandle, probe: Probe, layer: str, batches: Iterator[list[int]],
                pool: WorkerPool | None) -> Iterator[tuple[list[int], np.ndarray]]:
    """(indices, activations) per batch, in order; over `pool` with a bounded number of batches in flight."""
    if pool is None:
        for indices in batches:
            pixels = to_model_range(probe.load(indices, handle.card.input.size), handle)
            yield indices, layer_activations(handle, pixels, layer).numpy()
        return
    in_flight: deque = deque()
    for indices in batches:
        in_flight.append((indices, pool.submit(_probe_batch, indices)))
        while len(in_flight) > 2 * pool.size:
            first, future = in_flight.popleft()
            yield first, future.result()
    while in_flight:
        first, future = in_flight.popleft()
        yield first, future.result()


# --- the pipeline ------------------------------------------------------------------------------------------------
def _thumbnail(pixels: torch.Tensor) -> bytes:
    small = F.interpolate(pixels[None], size=(THUMBNAIL_SIZE, THUMBNAIL_SIZE), mode="area")[0, 0]
    buffer = io.BytesIO()
    Image.fromarray((small.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def validation_concept_sets(run_set: str, terms: list[str], extra: tuple[str, ...] = VALIDATION_SETS
                             ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The concept sets an output-layer validation reports: the run's own first, then each of `extra` that can be
    built here (the OpenI set needs torchxrayvision); (sets, the reason for each one left out)."""
    sets: dict[str, list[str]] = {run_set: terms}
    skipped: dict[str, str] = {}
    for name in extra:
        if name in sets:
            continue
        try:
            sets[name] = list(concept_set(name))
        except FileNotFoundError as error:
            skipped[name] = str(error)
    return sets, skipped


def output_validation(backend: ImageTextModel, neuron_images: list[np.ndarray], labels: list[str],
                      concept_sets: dict[str, list[str]], beta: float, vlm_similarity: list[float],
                      skipped: dict[str, str] | None = None) -> dict:
    """The output layer's validation: the run's concept set (the first) with MAMMI's template at the top level,
    the hit rate per prompt template, and every concept set's own validation under `concept_sets`."""
    by_set = validate_concept_sets(backend, neuron_images, labels, concept_sets, beta=beta)
    run_set = next(iter(concept_sets))
    own = by_set[run_set]
    top = {key: own[key] for key in ("hit_rate", "precision", "recall", "f1", "mean_lexical_similarity")}
    top["mean_vlm_similarity"] = float(np.mean(vlm_similarity)) if vlm_similarity else 0.0
    return {**top, "templates": own["templates"], "concept_sets": by_set, "concept_sets_skipped": skipped or {}}


def annotate_neurons(model: str = "demo", layer: str = "features", vlm: str = "demo-clip", concepts: str = "demo",
                     probe: str = "phantom:train", n: int = 5000, out: str | Path | None = None, *,
                     percentile: float = DEFAULT_PERCENTILE, beta: float = DEFAULT_BETA, cap: int = DEFAULT_CAP,
                     thumbnails: bool = True, device: str = "cpu", progress: bool = True,
                     allow_random_weights: bool = False,
                     validation_sets: tuple[str, ...] = VALIDATION_SETS, backend: str = "local", workers: int = 0,
                     address: str | None = None) -> dict[str, Any]:
    """Annotate every neuron of a layer; returns a summary (path, counts, timings, validation for the output layer:
    `output_validation`, over the run's concept set and each of `validation_sets`).
    With `backend` "ray" the probe activations (the work that grows with `n`) run on `workers` Ray actors (0: one
    per CPU of the cluster; xai_core.workers); the annotation written is the local one's.

    Resumable: probe activations are cached next to the output file and reused by a rerun with the same probe."""
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {', '.join(LAYERS)}, got '{layer}'")
    check_backend(backend, address)
    out = Path(out) if out else default_path(model, layer, vlm, concepts)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    handle = load_model(model, device, allow_random_weights=allow_random_weights)
    vlm_backend: ImageTextModel = CachedTexts(load_backend(vlm, device, allow_random_weights=allow_random_weights))
    terms = list(concept_set(concepts))
    if not terms:
        raise ValueError(f"the concept set '{concepts}' is empty")
    probing = probe_set(probe, n)
    timings["load"] = time.perf_counter() - start

    tick = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = out.with_suffix(".activations.npz")
    pool = None
    if backend == "ray":
        worker_device = "cuda" if handle.device.type == "cuda" else "cpu"
        pool = start_workers("ray", workers, _start_probe_worker,
                             (model, worker_device, allow_random_weights, probe, n, layer, 1),
                             gpus=1.0 if worker_device == "cuda" else 0.0, address=address)
    try:
        acts = probe_activations(handle, probing, layer, cache=cache, progress=progress, pool=pool)
    finally:
        if pool is not None:
            pool.shutdown()
    timings["activations"] = time.perf_counter() - tick

    tick = time.perf_counter()
    chosen = representatives(acts, percentile, cap)
    union = sorted({int(i) for rows in chosen for i in rows})
    shown = {int(i) for rows in chosen for i in rows[:THUMBNAILS_PER_NEURON]} if thumbnails else set()
    embeddings: dict[int, np.ndarray] = {}
    thumbs: dict[str, bytes] = {}
    bar = tqdm(total=len(union), desc="representatives", unit="img", disable=not progress)
    for indices in _batches(len(union), 64):
        ids = [union[i] for i in indices]
        pixels = probing.load(ids, max(vlm_backend.image_size, THUMBNAIL_SIZE))
        for i, row in zip(ids, vlm_backend.encode_images(pixels), strict=True):
            embeddings[i] = row
        thumbs.update({probing.ids[i]: _thumbnail(p) for i, p in zip(ids, pixels, strict=True) if i in shown})
        bar.update(len(ids))
    bar.close()
    timings["representatives"] = time.perf_counter() - tick

    tick = time.perf_counter()
    text = vlm_backend.encode_texts([CONCEPT_PROMPT.format(c) for c in terms] + [BASE_PROMPT])
    concept_embeddings, base = text[:-1], text[-1]
    labels = list(handle.card.labels)
    weights = head_weights(handle, layer, acts.shape[1])
    names = labels if layer == "output" else [f"{handle.card.feature_layer}:{k}" for k in range(acts.shape[1])]
    records, similarity, neuron_images = [], [], []
    for k, rows in enumerate(chosen):
        images = np.stack([embeddings[int(i)] for i in rows]) if len(rows) else np.zeros((0, text.shape[1]))
        neuron_images.append(images)
        found = select_concepts(concept_scores(images, concept_embeddings, base), terms, beta)
        column = acts[:, k]
        counts, edges = np.histogram(column, bins=30)
        records.append(NeuronRecord(
            neuron=k, name=names[k], concepts=found.concepts, scores=found.scores, uncertain=found.uncertain,
            representatives=[probing.ids[int(i)] for i in rows], activations=[float(column[i]) for i in rows],
            stats={"mean": float(column.mean()), "std": float(column.std()), "min": float(column.min()),
                   "max": float(column.max()),
                   "threshold": float(column.max() - (1 - percentile / 100) * (column.max() - column.min()))},
            histogram={"counts": counts.tolist(), "edges": edges.tolist()},
            weights={label: float(weights[j, k]) for j, label in enumerate(labels)} if weights is not None else {}))
        if layer == "output" and found.concepts:  # in the VLM's own text space: not independent of it
            label_text = vlm_backend.encode_texts([CONCEPT_PROMPT.format(sorted(label_terms(labels[k]))[0])])[0]
            similarity.append(float(concept_embeddings[terms.index(found.concepts[0])] @ label_text))
    timings["matching"] = time.perf_counter() - tick

    validation = None
    if layer == "output":
        tick = time.perf_counter()
        sets, skipped = validation_concept_sets(concepts, terms, validation_sets)
        validation = output_validation(vlm_backend, neuron_images, labels, sets, beta, similarity, skipped)
        timings["validation"] = time.perf_counter() - tick
    meta = {"model": model, "layer": layer, "layer_path": "logits" if layer == "output" else handle.card.feature_layer,
            "vlm": vlm, "concept_set": concepts, "concepts": terms, "probe": probe, "n": len(probing.ids),
            "percentile": percentile, "beta": beta, "cap": cap, "labels": labels,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "timings_s": {k: round(v, 1) for k, v in timings.items()}, "validation": validation,
            "random_weights": bool(handle.random_weights)}
    write_annotation(out, meta, records, thumbs)
    cache.unlink(missing_ok=True)
    uncertain = sum(r.uncertain for r in records)
    return {"path": str(out), "neurons": len(records), "concepts_in_set": len(terms), "uncertain": uncertain,
            "representative_images": len(union), "timings_s": meta["timings_s"], "validation": validation}
