"""Command line over the core: `python -m xai_core <command> ...`. Names and JSON keys are a stable contract."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from xai_core.imaging import RadiographError, load_radiograph
from xai_core.models import ModelError

DEFAULT_MODEL = "demo"
EXIT_BAD_INPUT = 2


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, mps or auto (default: auto)")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="use randomly initialised weights when a model's weights are missing (testing only)")


def _cmd_predict(args: argparse.Namespace) -> int:
    from xai_core.engine import Engine

    radiograph = load_radiograph(args.file)
    engine = Engine(args.device, allow_random_weights=args.allow_random_weights)
    prediction = engine.predict(radiograph, args.model)
    if args.json:
        out = prediction.to_dict()
        out["image"] = {"source_name": radiograph.source_name, "meta": radiograph.meta}
        print(json.dumps(out, indent=2))
        return 0
    if prediction.random_weights:
        print("WARNING: random weights (testing only); these numbers mean nothing.")
    print(f"{radiograph.source_name}  model={args.model}  sha256={radiograph.sha256[:12]}")
    print(f"{'finding':<28}{'probability':>12}{'threshold':>11}  positive")
    for row in prediction.ranked():
        mark = "yes" if row["positive"] else ""
        print(f"{row['label']:<28}{row['probability']:>12.3f}{row['threshold']:>11.3f}  {mark}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from xai_core.models import get_card, list_models

    names = list_models(family=None)
    if args.json:
        print(json.dumps({name: get_card(name).to_dict() for name in names}, indent=2))
    else:
        for name in names:
            card = get_card(name)
            print(f"{name:<28}{card.family:<12}{len(card.labels):>3} labels")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xai_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    predict = sub.add_parser("predict", help="per-finding probabilities for one radiograph")
    predict.add_argument("file", help="PNG, JPEG, TIFF or DICOM file")
    predict.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default: {DEFAULT_MODEL})")
    predict.add_argument("--json", action="store_true", help="print JSON")
    _add_common(predict)
    predict.set_defaults(run=_cmd_predict)

    models = sub.add_parser("models", help="list the registered models")
    models.add_argument("--json", action="store_true", help="print the model cards as JSON")
    models.set_defaults(run=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for bad input or a model that cannot load)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (RadiographError, ModelError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        sys.stderr.close()
        return 0
