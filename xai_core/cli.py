"""Command line over the core: `python -m xai_core <command> ...`. Names and JSON keys are a stable contract."""

from __future__ import annotations

import argparse
import datetime
import getpass
import importlib.util
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from pydicom.dataset import Dataset
from tqdm import tqdm

from xai_core import auth, baselines, removal
from xai_core.certainty import (
    MIN_FALSE,
    MIN_TRUE,
    SEGU_PERCENT,
    calibration_record,
    certainties,
    default_segmenter,
    fallback_note,
    find_calibration,
    fit_calibration,
    paper_table,
    score_aurocs,
    score_matrix,
    store_calibration,
    weights_id,
)
from xai_core.dicomweb.results import ResultInfo, region_segmentation, relevance_overlay, source_dataset, to_bytes
from xai_core.dicomweb.structured_report import REVIEW_VERDICTS, MethodReport, structured_report
from xai_core.engine import Engine
from xai_core.errors import InputError, UnknownNameError, XaiError
from xai_core.evaluation import (
    BASELINE_CHECK_N,
    print_by_finding,
    print_pic_coverage,
    print_summary,
    resolve_metrics,
    run_evaluation,
)
from xai_core.explainers import Explanation, list_explainers
from xai_core.files import strict_json
from xai_core.imaging import Radiograph, load_radiograph, sniff_format
from xai_core.mammi import annotate_neurons
from xai_core.metrics.gaze import GAZE_KERNELS, resolve_gaze_kernel
from xai_core.models import CropBox, get_card, list_models, ood
from xai_core.overlay import overlay_png
from xai_core.phantom import SHORTCUT_LABEL, generate_case
from xai_core.phantom.samples import write_samples
from xai_core.phantom.writers import contact_sheet, write_split
from xai_core.runtime import pick_device
from xai_core.samples import real_samples, real_samples_dir
from xai_core.segx import CalibrationError, by_label, calibrate, shortcut_figures
from xai_core.store import CaseStore, backup_store, case_name
from xai_core.training.classifier import ClassifierRecipe, train_classifier
from xai_core.training.clip import ClipRecipe, train_clip
from xai_core.training.mimic import EXPLANATIONS as MIMIC_EXPLANATIONS
from xai_core.training.mimic import VARIANTS as MIMIC_VARIANTS
from xai_core.training.mimic import MimicRecipe, train_mimic
from xai_core.training.nemt import EPOCH_CASES, NEMtRecipe, train_nemt
from xai_core.training.segmenter import SegmenterRecipe, train_segmenter
from xai_core.workers import BACKENDS, start_workers

DEFAULT_MODEL = "demo"
EXIT_BAD_INPUT = 2


def print_json(value: Any) -> None:
    """Print strict JSON (never NaN or Infinity) to stdout."""
    print(strict_json(value))


def _shown_name(radiograph: Radiograph, show_name: bool) -> str:
    """The file name only when asked for (it often holds a patient's name or ID); the content label otherwise."""
    return radiograph.source_name if show_name else case_name(radiograph.sha256)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, mps or auto (default: auto)")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="use randomly initialised weights when a model's weights are missing (testing only)")


def _add_dataset(parser: argparse.ArgumentParser, default_data: str, data_help: str) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", default=default_data, help=data_help)
    parser.add_argument("--n", type=int, default=200, help="cases (default: 200)")
    parser.add_argument("--seed", type=int, default=0)


def _cmd_predict(args: argparse.Namespace) -> int:
    radiograph = load_radiograph(args.file)
    engine = Engine(args.device, allow_random_weights=args.allow_random_weights)
    prediction = engine.predict(radiograph, args.model)
    domain = engine.domain(radiograph, args.model)
    if args.json:
        out = prediction.to_dict()
        out.update(domain.to_json())
        out["image"] = {"source_name": _shown_name(radiograph, args.show_name), "meta": radiograph.meta}
        print_json(out)
        return 0
    if prediction.random_weights:
        print("WARNING: random weights (testing only); these numbers mean nothing.")
    print(f"{_shown_name(radiograph, args.show_name)}  model={args.model}  sha256={radiograph.sha256[:12]}")
    _print_domain(domain)
    print(f"{'finding':<28}{'probability':>12}{'threshold':>11}  positive")
    for row in prediction.ranked():
        mark = "yes" if row["positive"] else ""
        print(f"{row['label']:<28}{row['probability']:>12.3f}{row['threshold']:>11.3f}  {mark}")
    return 0


def _print_domain(domain: ood.DomainCheck) -> None:
    """The out-of-domain guard's answer in the table output."""
    if domain.out_of_domain:
        print(f"WARNING: {domain.message}\n         {domain.score_line()}")
    elif domain.out_of_domain is None:
        print(f"out-of-domain guard: {domain.note}")


def _cmd_phantom(args: argparse.Namespace) -> int:
    if args.samples:
        print(write_samples(args.out or "assets/samples"))
        return 0
    if args.contact_sheet:
        cases = [generate_case(args.split, i, seed=args.seed, size=args.size, shortcut=args.shortcut)
                 for i in range(args.n)]
        Image.fromarray(contact_sheet(cases)).save(args.contact_sheet)
        print(args.contact_sheet)
        return 0
    if not args.out:
        raise SystemExit("error: --out DIR is required (or --contact-sheet FILE)")
    out = write_split(args.out, args.split, args.n, seed=args.seed, size=args.size, shortcut=args.shortcut,
                      png_bits=args.png_bits, workers=args.workers)
    print(out)
    return 0


def _sizes(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The recipe settings given on the command line (the recipe's defaults otherwise)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _cmd_train(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what != "clip" and (args.init or args.drop_modifiers is not None):
        raise InputError("--init and --drop-modifiers are options of 'train clip'")
    if args.lr is not None and args.what not in ("clip", "mimic"):
        raise InputError("--lr is an option of 'train clip' and 'train mimic'")
    if args.what == "classifier":
        recipe = ClassifierRecipe(name=args.name or ("demo" if args.shortcut is None else "demo-shortcut"),
                                  steps=args.steps or ClassifierRecipe.steps, batch=args.batch,
                                  seed=args.seed, shortcut=args.shortcut,
                                  **_sizes(args, "val_n", "test_n", "data_seed"))
        record = train_classifier(recipe, device=args.device or "auto", checkpoint_dir=args.checkpoint_dir)
    elif args.what == "segmenter":
        target = args.target or ("lesion" if args.name == "demo-lesion" else "anatomy")
        recipe = SegmenterRecipe.for_target(target, name=args.name, steps=args.steps, seed=args.seed,
                                            shortcut=args.shortcut, **_sizes(args, "test_n", "data_seed"))
        record = train_segmenter(recipe, device=args.device or "auto", checkpoint_dir=args.checkpoint_dir)
    elif args.what == "nemt":
        steps = args.steps or (round(args.epochs * EPOCH_CASES / args.batch) if args.epochs else NEMtRecipe.steps)
        recipe = NEMtRecipe(model=args.model, steps=steps, batch=args.batch, seed=args.seed,
                            **_sizes(args, "test_n", "data_seed"))
        record = train_nemt(recipe, device=args.device or "auto", checkpoint_dir=args.checkpoint_dir)
    elif args.what == "mimic":
        members = args.members or (2 if args.variant == "discriminator" else 1)
        suffix = "mimic" if args.variant == "gaze" else f"mimic-{args.variant}"
        recipe = MimicRecipe.starting(None if args.from_scratch else args.model,
                                      name=args.name or f"{args.model}-{suffix}", variant=args.variant,
                                      members=members, batch=args.batch, seed=args.seed,
                                      beta=MimicRecipe.beta if args.beta is None else args.beta,
                                      shortcut=args.shortcut, explanation=args.explanation,
                                      **_sizes(args, "steps", "lr", "val_n", "test_n", "data_seed"))
        record = train_mimic(recipe, device=args.device or "auto", checkpoint_dir=args.checkpoint_dir)
    else:
        recipe = ClipRecipe(name=args.name or ClipRecipe.name, steps=args.steps or ClipRecipe.steps, batch=args.batch,
                            seed=args.seed, init=args.init,
                            **_sizes(args, "lr", "test_n", "data_seed", "drop_modifiers"))
        record = train_clip(recipe, device=args.device or "auto", checkpoint_dir=args.checkpoint_dir)
    print_json({k: record[k] for k in ("file", "sha256", "train_seconds", "metrics")})
    return 0


def _verdicts(text: str | None, methods: list[str]) -> dict[str, str]:
    """`--verdict`: one verdict for every method (`agree`) or per method (`gradcam=agree,ig=unsure`)."""
    if not text:
        return {}
    pairs = [part.strip() for part in text.split(",") if part.strip()]
    if len(pairs) == 1 and "=" not in pairs[0]:
        pairs = [f"{method}={pairs[0]}" for method in methods]
    verdicts: dict[str, str] = {}
    for pair in pairs:
        method, _, verdict = (p.strip() for p in pair.partition("="))
        if method not in methods or verdict not in REVIEW_VERDICTS:
            raise InputError(f"--verdict '{pair}' is not METHOD=VERDICT for an explained method ({', '.join(methods)})"
                             f" with VERDICT one of {', '.join(REVIEW_VERDICTS)}")
        verdicts[method] = verdict
    return verdicts


def _dicom_source(path: Path, radiograph: Radiograph) -> Dataset:
    """The source data set for `--dicom-out` (an `InputError` for an image that is not DICOM)."""
    if radiograph.meta.get("format") != "DICOM":
        raise InputError(f"--dicom-out needs a DICOM source, but the input is a {radiograph.meta.get('format', '?')} "
                         "image; drop --dicom-out or explain the DICOM file")
    return source_dataset(path.read_bytes())


def _write_dicom(args: argparse.Namespace, engine: Engine, radiograph: Radiograph, source: Dataset, crop: CropBox,
                 explanations: dict[str, Explanation], segu: dict[str, Any],
                 verdicts: dict[str, str], out_dir: Path) -> list[dict[str, Any]]:
    """`--dicom-out`: per method an overlay Secondary Capture and a region Segmentation (the SegX-refined region as
    segment 2 with `--segx`), and one Structured Report, named by their SOP Instance UIDs. Every object is made
    before the first file is written."""
    findings = engine.predict(radiograph, args.model).to_dict()["findings"]
    domain = engine.domain(radiograph, args.model)
    warning = domain.message if domain.out_of_domain else ""
    written: list[tuple[str | None, Dataset]] = []
    reports = []
    for method, explanation in explanations.items():
        info = ResultInfo(method=method, target=explanation.target, model=args.model, out_of_domain=warning)
        full = explanation.resized_to_image(radiograph.pixels.shape, crop)
        refined = None
        if args.segx:
            binary = engine.refine(radiograph, args.model, method, args.target, segmenter=args.segmenter,
                                   mode="binary", percent=args.region_percent)
            refined = replace(explanation, map=binary).resized_to_image(radiograph.pixels.shape, crop) >= 0.5
        objects = [relevance_overlay(source, full, info),
                   region_segmentation(source, full, info, percent=args.region_percent, refined=refined)]
        written.extend((method, obj) for obj in objects)
        reports.append(MethodReport(method=method, results=objects, segu=segu.get(method),
                                    verdict=verdicts.get(method)))
    target = next(iter(explanations.values())).target
    written.append((None, structured_report(source, model=args.model, target=target, findings=findings,
                                            out_of_domain=domain.out_of_domain,
                                            methods=reports)))
    files = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        encoded = [(method, obj, to_bytes(obj)) for method, obj in written]
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot write the DICOM results to --dicom-out ({type(exc).__name__}: {exc})") from exc
    for method, obj, data in encoded:
        path = out_dir / f"{obj.SOPInstanceUID}.dcm"
        try:
            path.write_bytes(data)
        except OSError as exc:
            raise InputError(f"cannot write {path.name} to --dicom-out ({exc.strerror}); "
                             f"{len(files)} of {len(encoded)} objects were written") from exc
        files.append({"file": str(path), "sop_class": obj.SOPClassUID.name, "sop_class_uid": str(obj.SOPClassUID),
                      "method": method})
    return files


def explain_inputs(paths: Sequence[str]) -> list[Path]:
    """The files to explain: each file as given, each folder's image and DICOM files (recursive, sorted; hidden
    files and files neither named nor shaped like an image left out; symlinked folders not followed)."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = []
            for folder, subfolders, names in os.walk(path):
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
                found.extend(Path(folder) / n for n in names if not n.startswith(".") and _looks_like_image(
                    Path(folder) / n))
            if not found:
                raise InputError(f"the folder {given} holds no PNG, JPEG, TIFF or DICOM file")
            files.extend(sorted(found))
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"no such file or folder: {given}")
    return files


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".dic")


def _looks_like_image(path: Path) -> bool:
    """An image suffix (a damaged image then gets its own error) or, without one, an image's magic bytes."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with path.open("rb") as stream:
            head = stream.read(132)
    except OSError:
        return False
    return sniff_format(head, path.name) != "unknown"


def _explain_options(args: argparse.Namespace) -> list[str]:
    """The checked method list of `explain` (clear errors before any model loads)."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise InputError(f"--methods names no method; choose from {', '.join(list_explainers())}")
    unknown = [m for m in methods if m not in list_explainers()]
    if unknown:
        raise UnknownNameError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(list_explainers())}")
    if args.dicom_out and not 0.0 < args.region_percent <= 100.0:
        raise InputError(f"--region-percent is {args.region_percent:g}; expected a share of the image in (0, 100]")
    return methods


def explain_file(args: argparse.Namespace, engine: Engine, path: Path, methods: list[str], *, index: int | None = None,
                 printing: bool = False, verdicts: dict[str, str] | None = None) -> dict[str, Any]:
    """`explain` for one file: the result JSON (maps and DICOM objects written where asked). With `index` (a batch),
    files go to a subfolder named by the image's content hash and the input is named by its position, never by its
    file name."""
    name = None if index is None else f"input {index}{path.suffix.lower()}"
    radiograph = load_radiograph(path, name=name)
    source = _dicom_source(path, radiograph) if args.dicom_out else None
    _, crop = engine.prepare(radiograph, args.model)
    domain = engine.domain(radiograph, args.model)
    note = domain.message if domain.out_of_domain else None
    case = case_name(radiograph.sha256)
    out_dir = Path(args.out) if args.out else None
    if out_dir and index is not None:
        out_dir = out_dir / case
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"model": args.model, "target": None, **domain.to_json(), "methods": {}}
    if index is not None:
        result = {"index": index, "case": case, **result}
    if printing:
        _print_domain(domain)
    explanations: dict[str, Explanation] = {}
    for method in methods:
        explanation = engine.explain(radiograph, args.model, method, args.target)
        explanations[method] = explanation
        result["target"] = explanation.target
        entry = {"seconds": round(explanation.seconds, 4), "map": None}
        if out_dir:
            np.save(out_dir / f"{method}.npy", explanation.map.astype(np.float32))
            full = explanation.resized_to_image(radiograph.pixels.shape, crop)
            (out_dir / f"{method}_overlay.png").write_bytes(overlay_png(radiograph.pixels, full, note=note))
            entry["map"] = str(out_dir / f"{method}.npy")
        if args.segx:
            refined = engine.refine(radiograph, args.model, method, args.target, segmenter=args.segmenter)
            entry["segx"] = {"mode": "soft", "map": None}
            if out_dir:
                np.save(out_dir / f"{method}_segx.npy", refined.astype(np.float32))
                entry["segx"]["map"] = str(out_dir / f"{method}_segx.npy")
            entry["segu"] = engine.certainty(radiograph, args.model, method, args.target, segmenter=args.segmenter)
        result["methods"][method] = entry
        if printing:
            print(f"{method:<10} {explanation.seconds:8.3f} s  {entry['map'] or ''}")
    if source is not None:
        segu = {m: e["segu"] for m, e in result["methods"].items() if "segu" in e}
        dicom_dir = Path(args.dicom_out) / case if index is not None else Path(args.dicom_out)
        result["dicom"] = _write_dicom(args, engine, radiograph, source, crop, explanations, segu, verdicts or {},
                                       dicom_dir)
        if printing:
            for item in result["dicom"]:
                print(f"{item['sop_class']:<32} {item['file']}")
    return result


def _cmd_explain(args: argparse.Namespace) -> int:
    methods = _explain_options(args)
    verdicts = _verdicts(args.verdict, methods)
    if verdicts and not args.dicom_out:
        raise InputError("--verdict goes into the DICOM Structured Report: add --dicom-out DIR")
    files = explain_inputs(args.file)
    batch = len(files) > 1 or any(Path(f).is_dir() for f in args.file)
    if batch and verdicts:
        raise InputError("--verdict is one reviewer's judgement of one image: explain that file alone")
    if not batch and args.backend == "local":
        engine = Engine(args.device, allow_random_weights=args.allow_random_weights)
        result = explain_file(args, engine, files[0], methods, printing=not args.json, verdicts=verdicts)
        if args.json:
            print_json(result)
        return 0
    return _explain_batch(args, files, methods)


_EXPLAIN_WORKER: dict[str, Any] = {}


def _start_explain_worker(args: argparse.Namespace, threads: int, methods: list[str]) -> None:
    torch.set_num_threads(threads)
    _EXPLAIN_WORKER["engine"] = Engine(args.device, allow_random_weights=args.allow_random_weights)
    _EXPLAIN_WORKER["args"] = args
    _warm_up(args, methods)


def _explain_task(item: tuple[int, Path, list[str]]) -> dict[str, Any]:
    index, path, methods = item
    try:
        return explain_file(_EXPLAIN_WORKER["args"], _EXPLAIN_WORKER["engine"], path, methods, index=index)
    except XaiError as exc:
        return {"index": index, "error": str(exc), "error_type": type(exc).__name__}


def _warm_up(args: argparse.Namespace, methods: list[str]) -> None:
    """Loads the models and runs every method once on a phantom case (not a user's file, whose cached result would
    then carry the cold timing), so that per-file timings are warm."""
    radiograph = Radiograph.from_array(generate_case("test", 0, seed=0, size=256).image, source_name="warm-up")
    for method in methods:
        _EXPLAIN_WORKER["engine"].explain(radiograph, args.model, method, args.target)


def _explain_batch(args: argparse.Namespace, files: list[Path], methods: list[str]) -> int:
    """Many files in one process (or over Ray actors), results as JSON lines in input order, then a summary line."""
    start = time.perf_counter()
    bar = tqdm(total=len(files), desc=f"explain {args.model}", unit="file", file=sys.stderr)
    pool = None
    if args.backend == "ray":
        threads = max(1, args.threads or 1)
        pool = start_workers("ray", args.workers, _start_explain_worker, (args, threads, methods), threads=threads,
                             gpus=1.0 if pick_device(args.device).type == "cuda" else 0.0, address=args.address)
        startup = {"workers": pool.size, "backend": "ray"}
    else:
        _start_explain_worker(args, args.threads or torch.get_num_threads(), methods)
        startup = {"workers": 1, "backend": "local"}
    startup_seconds = time.perf_counter() - start
    failed, work_seconds = 0, 0.0
    try:
        items = [(index, path, methods) for index, path in enumerate(files)]
        if pool is None:
            results = map(_explain_task, items)
        else:
            results = (future.result() for future in [pool.submit(_explain_task, item) for item in items])
        for result in results:
            failed += "error" in result
            work_seconds += sum(m["seconds"] for m in result.get("methods", {}).values())
            if args.json:
                print(strict_json(result, indent=None), flush=True)
            elif "error" in result:
                tqdm.write(f"input {result['index']}: {result['error']}", file=sys.stderr)
            else:
                tqdm.write(f"input {result['index']} ({result['case']}): " + ", ".join(
                    f"{m} {e['seconds']:.3f} s" for m, e in result["methods"].items()), file=sys.stdout)
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    summary = {"summary": {"files": len(files), "explained": len(files) - failed, "failed": failed,
                           "methods": methods, **startup, "startup_seconds": round(startup_seconds, 3),
                           "explain_seconds": round(work_seconds, 3),
                           "wall_seconds": round(time.perf_counter() - start, 3)}}
    if args.json:
        print(strict_json(summary, indent=None), flush=True)
    else:
        print(f"{len(files) - failed} of {len(files)} files explained; start-up {startup_seconds:.2f} s, "
              f"explanations {work_seconds:.2f} s")
    return 2 if failed else 0


def _phantom_split(data: str) -> str:
    kind, _, split = data.partition(":")
    if kind != "phantom" or split not in ("train", "val", "test"):
        raise InputError(f"--data must be phantom:train, phantom:val or phantom:test (got '{data}')")
    return split


def _without_tag(engine: Engine, model: str, label: str, split: str, index: int, seed: int,
                 shortcut: float) -> bool:
    """Whether `model` still calls `label` on the case's film with its tag left out."""
    case = generate_case(split, index, seed=seed, size=256, shortcut=shortcut, burn_tag=False)
    prediction = engine.predict(Radiograph.from_array(case.image, source_name=case.case_id), model)
    return bool(prediction.positive[list(engine.model(model).card.labels).index(label)])


def _cmd_segu(args: argparse.Namespace) -> int:
    split = _phantom_split(args.data)
    if args.ship and not args.calibrate:
        raise InputError("--ship stores a new calibration: use it with --calibrate")
    engine = Engine(args.device, allow_random_weights=args.allow_random_weights)
    handle = engine.model(args.model)
    segmenter = args.segmenter or default_segmenter(args.model)
    rows: list[dict[str, Any]] = []
    for index in tqdm(range(args.n), desc=f"segu {args.model}/{args.method}", unit="case", disable=args.json):
        case = generate_case(split, index, seed=args.seed, size=256, shortcut=args.shortcut)
        radiograph = Radiograph.from_array(case.image, source_name=case.case_id)
        prediction = engine.predict(radiograph, args.model)
        for i in np.flatnonzero(prediction.positive):
            label = handle.card.labels[i]
            scores = engine.segu_scores(radiograph, args.model, args.method, label, segmenter=segmenter,
                                        percent=SEGU_PERCENT)
            rows.append({"case": index, **scores, "label": label, "correct": label in case.labels,
                         "tag": case.shortcut, "probability": float(prediction.probabilities[i])})
            if case.shortcut and label == SHORTCUT_LABEL:
                rows[-1]["without_tag"] = _without_tag(engine, args.model, label, split, index, args.seed,
                                                       args.shortcut)
    if args.rows:
        Path(args.rows).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(args.rows, index=False)
    scores = score_matrix(rows)
    correct = np.array([row["correct"] for row in rows], bool)
    labels = [row["label"] for row in rows]
    weights = {"model_weights": weights_id(handle), "segmenter_weights": weights_id(engine.model(segmenter))}
    if args.calibrate:
        calibration = fit_calibration(scores, correct, labels, min_true=args.min_true, min_false=args.min_false)
        calibration["data"] = args.data
    else:
        calibration, note = find_calibration(args.model, args.method, segmenter, **weights)
        if calibration is None:
            raise CalibrationError(note)
    certainty = certainties(calibration, labels, scores)
    mean = {name: float(np.nanmean(certainty[group])) if np.isfinite(certainty[group]).any() else float("nan")
            for name, group in (("true_positive", correct), ("false_positive", ~correct))}
    per_finding = {label: {k: entry[k] for k in ("source", "n_true", "n_false", "threshold")}
                   for label, entry in calibration["per_label"].items()}
    result: dict[str, Any] = {
        "model": args.model, "method": args.method, "data": args.data, "seed": args.seed, "n_cases": args.n,
        "segmenter": segmenter, "percent": SEGU_PERCENT, "n_positive_findings": len(rows), "mean_certainty": mean,
        "calibration": {**calibrate(certainty, correct, seed=args.seed), "in_sample": bool(args.calibrate),
                        "fitted_on": calibration["data"], "file": calibration.get("file")},
        "by_label": by_label(certainty, correct, labels),
        "scores": score_aurocs(scores, correct, seed=args.seed),
        "table4": {args.method: paper_table(scores, correct)},
        "per_finding_calibration": per_finding,
        "fallback_labels": calibration["fallback_labels"],
        "notes": [note for label in sorted(set(labels)) if (note := fallback_note(calibration, label))],
    }
    if args.shortcut is not None:
        result["shortcut"] = shortcut_figures(certainty, scores, rows, SHORTCUT_LABEL)
    if args.calibrate:
        figures = {key: result[key] for key in ("scores", "table4", "mean_certainty")}
        figures["calibration"] = {k: v for k, v in result["calibration"].items() if k != "file"}
        figures["within_label_auroc"] = result["by_label"]["within_label_auroc"]
        record = calibration_record(calibration, data=args.data, seed=args.seed, n_cases=args.n,
                                    percent=SEGU_PERCENT, shortcut=args.shortcut, figures=figures, **weights)
        path = store_calibration(args.model, args.method, segmenter, record, shipped=args.ship)
        result["stored"] = True
        result["calibration"]["file"] = str(path)
    print_json(result)
    return 0


def validation_lines(validation: dict[str, Any]) -> list[str]:
    """MAMMI's output-layer validation in plain lines: the run's concept set, then every set with its templates."""
    numbers = ", ".join(f"{k} {v:.3f}" for k, v in validation.items() if isinstance(v, int | float))
    lines = [f"output-layer validation: {numbers}"]
    for name, result in validation.get("concept_sets", {}).items():
        templates = "; ".join(f"'{t}' {hit:.2f}" for t, hit in result["templates"].items())
        lines.append(f"  concept set {name} ({result['terms']} terms, {result['labels_in_set']} labels nameable): "
                     f"hit rate {result['hit_rate']:.3f}, P {result['precision']:.3f}, R {result['recall']:.3f}, "
                     f"F1 {result['f1']:.3f}, lexical similarity {result['mean_lexical_similarity']:.3f}; "
                     f"hit rate per template: {templates}")
    for name, reason in validation.get("concept_sets_skipped", {}).items():
        lines.append(f"  concept set {name} left out: {reason}")
    return lines


def _ood_progress(total: int, desc: str, quiet: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="case", disable=quiet)


def _ood_figures(args: argparse.Namespace, engine: Engine, stats: ood.OodStats, shortcut: float | None,
                 seconds: dict[str, float]) -> dict[str, Any]:
    """The guard's false alarms on held-out phantom test cases and its detections on every real sample."""
    handle, lock = engine.model(args.model), engine.lock(args.model)
    test = ood.PhantomData("test", args.test_seed, 0, args.test_n, shortcut)
    start = time.perf_counter()
    with _ood_progress(args.test_n, f"ood {args.model}: test", args.json) as bar:
        false_alarm = ood.false_alarms(handle, stats, test, lock, bar.update)
    seconds["test_features"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    paths = [sample.path for sample in real_samples()]
    detection = ood.detections(handle, stats, paths, lock)
    seconds["real_features"] = round(time.perf_counter() - start, 1)
    detection["per_file"] = [{"case": case_name(row["sha256"]) if row["sha256"] else None, **row}
                             for row in detection["per_file"]]  # by content hash, never by file name
    folder = real_samples_dir()
    detection["source"] = "XAI_REAL_SAMPLES_DIR" if folder else None  # a folder path can name a patient
    if not paths:
        detection["note"] = "no real radiographs found: set XAI_REAL_SAMPLES_DIR to a folder of them"
    return {"false_alarm": false_alarm, "detection": detection}


def _cmd_ood(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    for name, value, least in (("--n", args.n, 50), ("--val-n", args.val_n, 50), ("--test-n", args.test_n, 1)):
        if value < least:
            raise InputError(f"{name} must be at least {least} (got {value})")
    if not 0.0 < args.val_false_alarm < 0.5:
        raise InputError(f"--val-false-alarm is a share of val cases in (0, 0.5); got {args.val_false_alarm:g}")
    engine = Engine(args.device)
    handle = engine.model(args.model)
    weights = ood.weights_of(handle)
    path = Path(args.file) if args.file else None
    train_seed, val_seed, shortcut = ood.training_data(handle)
    seconds: dict[str, float] = {}
    if args.fit:
        if not ood.has_features(handle):
            raise InputError(f"{args.model} exposes no pooled features: the out-of-domain guard cannot be fitted")
        fit = ood.PhantomData("train", train_seed, 0, args.n, shortcut)
        val = ood.PhantomData("val", val_seed, 0, args.val_n, shortcut)
        start = time.perf_counter()
        with _ood_progress(args.n, f"ood {args.model}: train", args.json) as bar:
            train_features = ood.phantom_features(handle, fit, engine.lock(args.model), bar.update)
        seconds["fit_features"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        mean, cholesky, shrinkage = ood.fit_gaussian(train_features)
        seconds["fit_gaussian"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        with _ood_progress(args.val_n, f"ood {args.model}: val", args.json) as bar:
            val_features = ood.phantom_features(handle, val, engine.lock(args.model), bar.update)
        seconds["val_features"] = round(time.perf_counter() - start, 1)
        val_scores = ood.OodStats(mean, cholesky, float("inf")).scores(val_features)
        stats = ood.OodStats(mean, cholesky, ood.threshold_at(val_scores, args.val_false_alarm))
    else:
        stats, note = ood.find_stats(args.model, weights, [path] if path else None)
        if stats is None:
            raise InputError(note.removeprefix("not checked: "))
    figures = _ood_figures(args, engine, stats, shortcut, seconds)
    result: dict[str, Any] = {"model": args.model, "weights_sha256": weights, "threshold": stats.threshold,
                              **figures, "threads": torch.get_num_threads(), "device": str(handle.device),
                              "seconds": seconds}
    if args.fit:
        command = "python -m xai_core " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
            if sys.argv[1:2] == ["ood"] else ood.fit_command(args.model)
        extra = {"figures": figures, "seconds": seconds, "threads": torch.get_num_threads(),
                 "device": str(handle.device), "torch": torch.__version__,
                 "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        record = ood.stats_record(args.model, weights, stats, fit=fit, val=val, shrinkage=shrinkage,
                                  val_scores=val_scores, command=command, extra=extra)
        result.update(fit=record["fit"], val=record["val"], estimator=record["estimator"], stored=True,
                      file=str(ood.store_record(args.model, record, path)))
    else:
        result.update({key: stats.record.get(key) for key in ("fit", "val", "estimator", "command")},
                      stored=False, file=stats.record.get("file"))
    if args.json:
        print_json(result)
        return 0
    alarm, found = result["false_alarm"], result["detection"]
    print(f"{args.model}: threshold {stats.threshold:.2f} ({result['file']})")
    print(f"false alarms on phantom test (seed {alarm['seed']}, n {alarm['n']}): {alarm['rate']:.3f} "
          f"[{alarm['ci_low']:.3f}, {alarm['ci_high']:.3f}] (bar <= {alarm['bar']:.2f})")
    if found["n"]:
        print(f"real radiographs flagged: {found['flagged']} of {found['n']} ({found['rate']:.3f}; bar >= "
              f"{found['bar']:.2f})")
        for row in found["per_file"]:
            score = "unreadable" if row["score"] is None else f"{row['score']:.1f}"
            print(f"  {row['case'] or '?':<20}{score:>12}  {'out of domain' if row['out_of_domain'] else 'MISSED'}")
    else:
        print(found.get("note", "no real radiographs"))
    return 0


def _cmd_annotate(args: argparse.Namespace) -> int:
    result = annotate_neurons(args.model, args.layer, args.vlm, args.concepts, args.probe, args.n, args.out,
                              percentile=args.percentile, beta=args.beta, cap=args.cap,
                              device=args.device or "cpu", progress=not args.json,
                              allow_random_weights=args.allow_random_weights, backend=args.backend,
                              workers=args.workers, address=args.address)
    if args.json:
        print_json(result)
    else:
        print(f"{result['neurons']} neurons annotated ({result['uncertain']} uncertain) with "
              f"{result['concepts_in_set']} concepts -> {result['path']}")
        if result["validation"]:
            for line in validation_lines(result["validation"]):
                print(line)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    metrics = resolve_metrics(args.metrics)
    summary = run_evaluation(args.model, args.data, args.n, methods, metrics, Path(args.out), seed=args.seed,
                             device=args.device, gaze_kernel=resolve_gaze_kernel(args.gaze_kernel, args.gaze_sigma),
                             workers=args.workers, backend=args.backend, address=args.address,
                             precision=args.precision, segmenter=args.segmenter, removal=args.removal,
                             baseline_check_n=args.baseline_check_n)
    print(print_summary(summary, metrics))
    stored = json.loads((Path(args.out) / "summary.json").read_text())
    print("\nper finding: mean (n)")
    print(print_by_finding(stored["by_finding"], metrics))
    if stored["pic_coverage"]:
        print("\n" + print_pic_coverage(stored["pic_coverage"]))
    run = json.loads((Path(args.out) / "run.json").read_text())
    for method, kinds in run.get("pic_median_curves", {}).items():
        print(f"{method:<10} median-curve AUC " + ", ".join(
            f"{kind.upper()} {_number(c['median_curve_auc'])} [{_number(c['ci_low'])},{_number(c['ci_high'])}] "
            f"(n={c['n']})" for kind, c in kinds.items()))
    print(f"per-image rows: {Path(args.out) / 'per_image.csv'}; summary: {Path(args.out) / 'summary.json'}")
    return 0


def _number(value: float | None) -> str:
    """A value read back from strict JSON (null where undefined), to 3 decimals."""
    return "n/a" if value is None else f"{value:.3f}"


EXIT_BASELINE_READS_POSITIVE = 1


def _cmd_check_baselines(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise InputError(f"--n must be at least 1 (got {args.n})")
    check = baselines.run(args.model, n=args.n, seed=args.seed, device=str(pick_device(args.device)),
                          more=args.more)
    if args.json:
        print_json(check)
    else:
        print(baselines.format_table(check))
        print("passes" if check["passes"] else "FAILS: a removal baseline reads as positive (see the verdicts)")
    return 0 if check["passes"] else EXIT_BASELINE_READS_POSITIVE


def _cmd_models(args: argparse.Namespace) -> int:
    names = list_models(family=None)
    if args.json:
        print_json({name: get_card(name).to_dict() for name in names})
    else:
        for name in names:
            card = get_card(name)
            print(f"{name:<28}{card.family:<12}{len(card.labels):>3} labels")
    return 0


BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _cmd_bench(args: argparse.Namespace) -> int:
    script = BENCHMARKS_DIR / f"{args.name}.py"
    if not script.is_file():
        known = sorted(p.stem for p in BENCHMARKS_DIR.glob("*.py"))
        raise UnknownNameError(f"no benchmark '{args.name}'; known: "
                               f"{', '.join(known) or 'none (benchmarks/ missing)'}")
    spec = importlib.util.spec_from_file_location(f"benchmarks.{args.name}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so worker processes can unpickle its functions
    spec.loader.exec_module(module)
    return module.main(args.rest) or 0


def _cmd_add_user(args: argparse.Namespace) -> int:
    password = None
    if not args.oidc:
        password = getpass.getpass(f"password for {args.username}: ")
        if password != getpass.getpass("again: "):
            raise InputError("the two passwords differ; nothing was changed")
    user = auth.add_user(args.users_file, args.username, password, args.role, name=args.name, replace=args.replace)
    print(f"{user.username} ({user.role}) saved in {args.users_file or auth.users_file()}")
    return 0


def _cmd_remove_user(args: argparse.Namespace) -> int:
    if not auth.remove_user(args.users_file, args.username):
        raise InputError(f"no user '{args.username}' in {args.users_file or auth.users_file()}")
    print(f"{args.username} removed")
    return 0


def _cmd_list_users(args: argparse.Namespace) -> int:
    users = auth.list_users(args.users_file)
    if args.json:
        print_json([{"username": u.username, "role": u.role, "name": u.name} for u in users])
    else:
        for user in users:
            print(f"{user.username:<24}{user.role:<12}{user.name}")
    return 0


def _cmd_store_backup(args: argparse.Namespace) -> int:
    print(backup_store(args.destination, source=args.store, overwrite=args.overwrite))
    return 0


def _cmd_store_check(args: argparse.Namespace) -> int:
    if args.store and not Path(args.store).is_file():
        raise InputError(f"no case store at {args.store}")
    status = CaseStore(args.store).status()
    print_json(status)
    return 0 if status["integrity"] == "ok" else EXIT_BAD_INPUT


def _add_admin_commands(sub: Any) -> None:
    """Logins and the case store: add-user, remove-user, list-users, store-backup, store-check."""
    users_help = "users file (default: $XAI_USERS_FILE)"
    add_user = sub.add_parser("add-user", help="add or update a reviewer login (asks for the password)")
    add_user.add_argument("username")
    add_user.add_argument("--role", default="reviewer", choices=sorted(auth.PERMISSIONS))
    add_user.add_argument("--name", default="", help="display name")
    add_user.add_argument("--oidc", action="store_true", help="no password: signs in through the identity provider")
    add_user.add_argument("--replace", action="store_true", help="update an existing user")
    add_user.add_argument("--users-file", default=None, help=users_help)
    add_user.set_defaults(run=_cmd_add_user)
    remove_user = sub.add_parser("remove-user", help="remove a reviewer login")
    remove_user.add_argument("username")
    remove_user.add_argument("--users-file", default=None, help=users_help)
    remove_user.set_defaults(run=_cmd_remove_user)
    list_users = sub.add_parser("list-users", help="the reviewer logins and their roles")
    list_users.add_argument("--users-file", default=None, help=users_help)
    list_users.add_argument("--json", action="store_true")
    list_users.set_defaults(run=_cmd_list_users)
    backup = sub.add_parser("store-backup", help="a consistent copy of the case store (SQLite backup API)")
    backup.add_argument("destination")
    backup.add_argument("--store", default=None, help="store file (default: $XAI_STORE_PATH or data/cases.sqlite)")
    backup.add_argument("--overwrite", action="store_true")
    backup.set_defaults(run=_cmd_store_backup)
    check = sub.add_parser("store-check", help="integrity, schema version and counts of the case store")
    check.add_argument("--store", default=None, help="store file (default: $XAI_STORE_PATH or data/cases.sqlite)")
    check.set_defaults(run=_cmd_store_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xai_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    predict = sub.add_parser("predict", help="per-finding probabilities for one radiograph")
    predict.add_argument("file", help="PNG, JPEG, TIFF or DICOM file")
    predict.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default: {DEFAULT_MODEL})")
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.add_argument("--show-name", action="store_true",
                         help="print the file's name (default: a label from its content hash; names often identify "
                              "patients)")
    _add_common(predict)
    predict.set_defaults(run=_cmd_predict)

    phantom = sub.add_parser("phantom", help="write a split of synthetic radiographs with ground truth")
    phantom.add_argument("--split", choices=["train", "val", "test"], default="train")
    phantom.add_argument("--n", type=int, default=16, help="number of cases (default: 16)")
    phantom.add_argument("--seed", type=int, default=0, help="seed (cases also differ by split and index)")
    phantom.add_argument("--size", type=int, default=256, help="image size in pixels (square)")
    phantom.add_argument("--shortcut", type=float, default=None, metavar="STRENGTH",
                         help="burn in a corner tag correlated with Pneumothorax at this strength (0..1)")
    phantom.add_argument("--out", default=None, help="output folder")
    phantom.add_argument("--png-bits", type=int, choices=[8, 16], default=8)
    phantom.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    phantom.add_argument("--contact-sheet", default=None, metavar="FILE", help="write a PNG grid of N cases instead")
    phantom.add_argument("--samples", action="store_true",
                         help="write the bundled sample cases (every finding, combinations, normals) to --out")
    phantom.set_defaults(run=_cmd_phantom)

    train = sub.add_parser("train", help="train a bundled demo model on phantom data")
    train.add_argument("what", choices=["classifier", "segmenter", "clip", "nemt", "mimic"])
    train.add_argument("--model", default=DEFAULT_MODEL,
                       help="nemt: the classifier to explain; mimic: the classifier every member starts from "
                            "(default: demo)")
    train.add_argument("--variant", choices=list(MIMIC_VARIANTS), default="gaze",
                       help="mimic: gaze (gaze-supervised explanations, default), discriminator (the reference's "
                            "ensemble and discriminator) or control (the same fine-tune, no explanation term)")
    train.add_argument("--members", type=int, default=None,
                       help="mimic: ensemble size K (default: 1; 2 for the discriminator variant)")
    train.add_argument("--beta", type=float, default=None, help="mimic: weight of the explanation term")
    train.add_argument("--explanation", choices=list(MIMIC_EXPLANATIONS), default=MimicRecipe.explanation,
                       help="mimic: the explanation the term acts on: gradcam (the product's Grad-CAM, default) or "
                            "hirescam (gradient times activation per position: the logit's exact share there), both "
                            "at the last feature map; or occlusion (gaze variant only): how much the findings' "
                            "probabilities change when what the reader never came near is removed, on every film")
    train.add_argument("--from-scratch", action="store_true",
                       help="mimic: random initial members (the reference's setting) instead of --model's weights; "
                            "steps and learning rate then default to the bundled classifiers' (1800, 3e-3)")
    train.add_argument("--epochs", type=float, default=None,
                       help="nemt: passes of 4,480 phantom cases (default 600 steps of 32: 4.3); --steps overrides")
    train.add_argument("--name", default=None, help="model name (default: demo, or demo-shortcut with --shortcut; "
                                                     "mimic: MODEL-mimic, MODEL-mimic-VARIANT for other variants)")
    train.add_argument("--steps", type=int, default=None,
                       help="training steps (default: the recipe's; mimic: 300, or 1800 with --from-scratch)")
    train.add_argument("--lr", type=float, default=None,
                       help="mimic, clip: peak learning rate (mimic: 3e-4, or 3e-3 with --from-scratch; clip: 3e-4)")
    train.add_argument("--init", default=None, metavar="MODEL",
                       help="clip: continue from this bundled image-text model's weights (recorded in the manifest) "
                            "instead of random ones")
    train.add_argument("--drop-modifiers", type=float, default=None, metavar="SHARE",
                       help="clip: the share of training texts without their findings' side, zone and severity "
                            f"(default {ClipRecipe.drop_modifiers})")
    train.add_argument("--batch", type=int, default=32)
    train.add_argument("--seed", type=int, default=0, help="initialisation seed")
    train.add_argument("--data-seed", type=int, default=None, help="phantom data seed (default: the recipe's)")
    train.add_argument("--shortcut", type=float, default=None, metavar="STRENGTH",
                       help="train on the tag world: the tag correlated with Pneumothorax at this strength (0..1; "
                            "0: independent of the labels, whose pneumothoraces still fade)")
    train.add_argument("--target", choices=["anatomy", "lesion"], default=None,
                       help="segmenter: anatomy (demo-anatomy) or lesion (demo-lesion: one mask, every finding's "
                            "lesions); default: lesion for --name demo-lesion, else anatomy")
    train.add_argument("--val-n", type=int, default=None, help="validation cases (default: the recipe's)")
    train.add_argument("--test-n", type=int, default=None, help="test cases (default: the recipe's)")
    train.add_argument("--device", default=None)
    train.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    train.add_argument("--checkpoint-dir", default="runs", help="where resumable checkpoints go")
    train.set_defaults(run=_cmd_train)

    explain = sub.add_parser("explain", help="explanation maps for radiographs and a target finding")
    explain.add_argument("file", nargs="+",
                         help="PNG, JPEG, TIFF or DICOM files, or folders of them (a DICOM series: its folder); with "
                              "more than one file, one JSON line per file (by position and content hash) and a "
                              "summary line, and --out/--dicom-out get a subfolder per image")
    explain.add_argument("--target", required=True, help="finding to explain (a label of the model)")
    explain.add_argument("--methods", default="gradcam", help="comma-separated: gradcam,gradcampp,scorecam,ig,xrai,"
                                                            "nemt,random")
    explain.add_argument("--model", default=DEFAULT_MODEL)
    explain.add_argument("--out", default=None, help="write <method>.npy and <method>_overlay.png here")
    explain.add_argument("--json", action="store_true")
    explain.add_argument("--segx", action="store_true",
                         help="add SegX refined maps (<method>_segx.npy) and SegU certainty per method")
    explain.add_argument("--segmenter", default="demo-anatomy", help="anatomy model for --segx")
    explain.add_argument("--dicom-out", default=None, metavar="DIR",
                         help="DICOM input only: write per method a Secondary Capture overlay and a Segmentation of "
                              "the top-p%% region (plus the SegX-refined region with --segx), and one Structured "
                              "Report, as DIR/<SOP Instance UID>.dcm, in new series of the source study")
    explain.add_argument("--region-percent", type=float, default=10.0, metavar="P",
                         help="--dicom-out: the share of the image in the Segmentation's regions (default: 10)")
    explain.add_argument("--verdict", default=None,
                         help="--dicom-out: the reviewer's verdict for the report, agree/disagree/unsure for every "
                              "method or per method (gradcam=agree,ig=unsure)")
    explain.add_argument("--workers", type=int, default=0,
                         help="--backend ray: actors (default 0: one per CPU of the cluster)")
    explain.add_argument("--threads", type=int, default=None,
                         help="torch threads (--backend ray: per actor, default 1; else torch's default)")
    _add_backend(explain)
    _add_common(explain)
    explain.set_defaults(run=_cmd_explain)

    segu = sub.add_parser("segu", help="SegU certainty of true vs false positive findings; --calibrate makes and "
                                       "stores a per-finding calibration")
    _add_dataset(segu, "phantom:val", "phantom:SPLIT (default: phantom:val)")
    segu.add_argument("--method", default="gradcam")
    segu.add_argument("--segmenter", default=None,
                      help="region source: demo-lesion (default for demo models where its weights exist), "
                           "demo-anatomy or xrv-pspnet (anatomy regions)")
    segu.add_argument("--calibrate", action="store_true",
                      help="fit the calibration on these cases (use phantom:val) and store it in "
                           "$XAI_DATA_DIR/segu-calibrations.json; without it, the stored calibration is applied")
    segu.add_argument("--ship", action="store_true",
                      help="with --calibrate: store it in assets/models/segu-calibrations.json (shipped with the "
                           "bundled models) instead")
    segu.add_argument("--min-true", type=int, default=MIN_TRUE,
                      help=f"true positives a finding needs for its own calibration (default: {MIN_TRUE})")
    segu.add_argument("--min-false", type=int, default=MIN_FALSE,
                      help=f"false positives a finding needs for its own calibration, else the pooled one is used "
                           f"(default: {MIN_FALSE})")
    segu.add_argument("--shortcut", type=float, default=None, metavar="STRENGTH",
                      help="phantom cases with the burned-in tag at this strength (0: independent of the label); "
                           "adds the lesion- vs tag-driven figures")
    segu.add_argument("--rows", default=None, metavar="CSV",
                      help="also write one row per positive finding (case index, SegU scores, label, right or not, "
                           "tag, probability) to this CSV")
    segu.add_argument("--json", action="store_true", help="no progress bar; JSON only")
    _add_common(segu)
    segu.set_defaults(run=_cmd_segu)

    guard = sub.add_parser("ood", help="the out-of-domain guard: fit its statistics (--fit) or measure its false "
                                       "alarms on phantom test cases and its detections on the real samples")
    guard.add_argument("--model", default=DEFAULT_MODEL)
    guard.add_argument("--fit", action="store_true",
                       help="fit the Gaussian on phantom train cases of the model's own data seed, set the threshold "
                            "on val and store them (default: assets/models/ood.json, or --file)")
    guard.add_argument("--n", type=int, default=ood.FIT_N, help=f"--fit: train cases (default: {ood.FIT_N})")
    guard.add_argument("--val-n", type=int, default=ood.VAL_N,
                       help=f"--fit: val cases the threshold is set on (default: {ood.VAL_N})")
    guard.add_argument("--val-false-alarm", type=float, default=ood.VAL_FALSE_ALARM,
                       help=f"--fit: share of val cases above the threshold (default: {ood.VAL_FALSE_ALARM})")
    guard.add_argument("--test-n", type=int, default=ood.TEST_N,
                       help=f"phantom test cases of the false-alarm figure (default: {ood.TEST_N})")
    guard.add_argument("--test-seed", type=int, default=ood.TEST_SEED,
                       help=f"their seed (default: {ood.TEST_SEED}, which no training or choice used)")
    guard.add_argument("--file", default=None,
                       help="statistics file to write (--fit) or read (default: write assets/models/ood.json; read "
                            "$XAI_DATA_DIR/ood.json, then assets/models/ood.json)")
    guard.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    guard.add_argument("--device", default=None, help="cpu, cuda, mps or auto (default: $XAI_DEVICE, else auto)")
    guard.add_argument("--json", action="store_true", help="no progress bar; JSON only")
    guard.set_defaults(run=_cmd_ood)

    evaluate = sub.add_parser("evaluate", help="every method x metric over a data set (resumable)")
    _add_dataset(evaluate, "phantom:test", "phantom:SPLIT or a folder with labels.csv")
    evaluate.add_argument("--methods", default="gradcam,gradcampp,scorecam,ig,xrai,nemt,random")
    evaluate.add_argument("--metrics", default="all", help="all, groups (localisation, shape, faithfulness, pic, "
                                                           "gaze) or metric names, comma-separated")
    evaluate.add_argument("--gaze-kernel", choices=tuple(GAZE_KERNELS), default=None,
                          help="gaze heatmap settings: mimic (default; Watson et al. 2023: 20 px box, sigma 150 px "
                               "in source pixels, scaled to the grid) or legacy (7 px box, sigma 6 px on the grid)")
    evaluate.add_argument("--gaze-sigma", type=float, default=None,
                          help="overrides the kernel's blur, in its pixels; alone, the legacy kernel with this sigma "
                               "in model-grid pixels (the flag's earlier meaning)")
    evaluate.add_argument("--out", default="results/evaluate", help="output folder (resumes if it exists)")
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--workers", type=int, default=0,
                          help="processes, each on its own cases (default 0: local, one per core on CPU for 8 cases "
                               "or more, else one; ray, one per CPU of the cluster)")
    _add_backend(evaluate)
    evaluate.add_argument("--segmenter", default="demo-anatomy", help="anatomy model for the segx metric")
    evaluate.add_argument("--removal", default=removal.DEFAULT_METHOD, choices=removal.METHODS,
                          help="how deletion, insertion and faithfulness correlation remove pixels (default: road, "
                               "ROAD's noisy linear imputation; constant: the legacy mid-grey)")
    evaluate.add_argument("--baseline-check-n", type=int, default=BASELINE_CHECK_N,
                          help="held-out phantom cases of the removal baseline self-check (0: skip it)")
    evaluate.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                          help="of the metrics' model calls: auto = bfloat16 where the hardware runs it fast")
    evaluate.set_defaults(run=_cmd_evaluate)

    check = sub.add_parser(
        "check-baselines", help="does the model read images with their information removed as 'no finding'?",
        description="The baseline self-check (xai_core.baselines): the model's probabilities on each removal "
                    "baseline (mean fill, blur, blur + noise, noisy linear imputation, local in-fills, constant "
                    "images) over held-out phantom cases, per finding and pooled: the share of negative (case, "
                    "finding) pairs each removal pushes over the operating point, against its bar (0.05 global, "
                    "0.10 local; a constant image must read negative for every finding). Exit status: 0 when every "
                    "recipe passes, 1 when a baseline reads as positive, 2 for bad input (unknown model, missing "
                    "weights, --n under 1).")
    check.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default: {DEFAULT_MODEL})")
    check.add_argument("--n", type=int, default=200, help="held-out phantom cases (default: 200)")
    check.add_argument("--seed", type=int, default=baselines.HELD_OUT_SEED,
                       help=f"phantom seed of the {baselines.HELD_OUT_SPLIT} split (default: "
                            f"{baselines.HELD_OUT_SEED}, which no training or manifest metric used)")
    check.add_argument("--more", action="store_true",
                       help="also the removals training never draws exactly (other operators, sizes, shapes)")
    check.add_argument("--device", default=None, help="cpu, cuda, mps or auto (default: $XAI_DEVICE, else auto)")
    check.add_argument("--json", action="store_true", help="print the whole check as JSON (null where undefined)")
    check.set_defaults(run=_cmd_check_baselines)

    annotate = sub.add_parser("annotate-neurons", help="MAMMI: name what a layer's neurons respond to (resumable)")
    annotate.add_argument("--model", default=DEFAULT_MODEL)
    annotate.add_argument("--layer", choices=["features", "output"], default="features")
    annotate.add_argument("--vlm", default="demo-clip", help="demo-clip or openclip:<arch>:<pretrained>")
    annotate.add_argument("--concepts", default="demo", help="demo, openi, or a text file of reports")
    annotate.add_argument("--probe", default="phantom:train", help="phantom:SPLIT or a folder of radiographs")
    annotate.add_argument("--n", type=int, default=5000, help="probing images (default: 5000)")
    annotate.add_argument("--out", default=None, help="SQLite file (default: assets/mammi/<model>-<layer>-...)")
    annotate.add_argument("--percentile", type=float, default=93.0, help="representative threshold p (default: 93)")
    annotate.add_argument("--beta", type=float, default=0.95, help="concept threshold beta (default: 0.95)")
    annotate.add_argument("--cap", type=int, default=50, help="most representatives per neuron (default: 50)")
    annotate.add_argument("--json", action="store_true", help="no progress bar; JSON summary")
    annotate.add_argument("--workers", type=int, default=0,
                          help="--backend ray: actors for the probe activations (default 0: one per CPU of the "
                               "cluster)")
    _add_backend(annotate)
    _add_common(annotate)
    annotate.set_defaults(run=_cmd_annotate)

    bench = sub.add_parser("bench", help="run a benchmark from benchmarks/ (extra arguments go to it)")
    bench.add_argument("name", help="engine, explainers, phantom, ...")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the benchmark (see its --help)")
    bench.set_defaults(run=_cmd_bench)

    models = sub.add_parser("models", help="list the registered models")
    models.add_argument("--json", action="store_true", help="print the model cards as JSON")
    models.set_defaults(run=_cmd_models)
    _add_admin_commands(sub)
    return parser


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="local processes (default) or Ray actors (a local Ray, or the cluster of --address)")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="ray: a running cluster (e.g. ray://head:10001 or auto); default: start a local Ray")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for bad input or a model that cannot load; 1 from
    check-baselines when a removal baseline reads as positive)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except XaiError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        sys.stderr.close()
        return 0
