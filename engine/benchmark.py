"""``sparsemat benchmark DATASET``: matte a folder of images and evaluate them in one go.

    sparsemat benchmark DATASET [--checkpoint C] [--out DIR] [--convention ours|dim|rvm] [--json]

DATASET holds the images (a folder named ``image``, ``images`` or ``merged``), their ground
truth (``alpha``, ``alphas`` or ``gt``) and, optionally, trimaps (``trimap`` or ``trimaps``:
the region evaluated, as the benchmark's code does) and priors (``prior`` or ``priors``: the
guided refiner's input without a checkpoint, the network's prior with one), all matched by
file name. Each image is matted on its own (no temporal reuse), with one model loaded for all,
written to OUT as EXR, then evaluated as ``sparsemat eval OUT ALPHA --trimap-dir TRIMAPS`` does.
"""
from __future__ import annotations

import json
import os
import sys
import time

from .validation import EXIT_FAILED, UsageError

class BenchmarkError(Exception):
    """An image of the dataset could not be matted; the run stops (exit 1)."""


FOLDERS = {"images": ("image", "images", "merged"), "alpha": ("alpha", "alphas", "gt"),
           "trimap": ("trimap", "trimaps"), "prior": ("prior", "priors")}


def add_benchmark_command(commands, device_type) -> None:
    parser = commands.add_parser(
        "benchmark", help="matte a dataset's images and evaluate them: speed beside SAD, MSE, Grad, Conn",
        description=__doc__.split("\n\n", 2)[2], formatter_class=_raw())
    parser.add_argument("dataset", metavar="DATASET", help="folder with image/, alpha/ and optionally trimap/, prior/")
    parser.add_argument("--checkpoint", default=os.environ.get("SPARSEMAT_CHECKPOINT"),
                        help="SparseMat checkpoint (default: $SPARSEMAT_CHECKPOINT); without one, the dataset's "
                             "priors go through the weight-free guided refiner")
    parser.add_argument("--out", metavar="DIR", help="where the mattes go (default: DATASET-predictions beside it)")
    parser.add_argument("--device", default="auto", type=device_type, metavar="DEVICE", help="as for matte")
    parser.add_argument("--max-pixels", type=int, default=None, help="as for matte")
    parser.add_argument("--convention", choices=("ours", "dim", "rvm"), default="ours", help="as for eval")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run_benchmark)


def _raw():
    import argparse

    return argparse.RawDescriptionHelpFormatter


def dataset_folders(root: str) -> dict[str, str | None]:
    """The dataset's folders by role; UsageError without images or ground truth."""
    if not os.path.isdir(root):
        raise UsageError(f"dataset folder not found: {root}")
    found = {}
    for role, names in FOLDERS.items():
        found[role] = next((os.path.join(root, name) for name in names if os.path.isdir(os.path.join(root, name))),
                           None)
        if found[role] is None and role in ("images", "alpha"):
            raise UsageError(f"dataset {root} has no {role} folder (one of: {', '.join(names)})")
    return found


def run_benchmark(args) -> int:
    from .evaluate import EvaluationError, dataset_items, evaluate, report, table
    from .metrics import CONVENTIONS

    convention = CONVENTIONS[args.convention]
    folders = dataset_folders(args.dataset)
    if not args.checkpoint and folders["prior"] is None:
        raise UsageError(f"nothing to matte with: give --checkpoint, or put a prior/ folder in {args.dataset} for the "
                         f"weight-free guided refiner")
    if convention.unknown is None and folders["trimap"]:
        print(f"sparsemat: note: the {convention.name} convention evaluates whole frames: the trimaps are not used",
              file=sys.stderr)
    out = args.out or os.path.abspath(args.dataset).rstrip(os.sep) + "-predictions"
    # Every image needs its ground truth (and prior): checked before the model loads. An item's
    # "pred" is the image here; its matte, once made, is evaluated below.
    items = dataset_items(folders["images"], folders["alpha"], folders["trimap"] if convention.unknown else None)
    priors = dataset_items(folders["images"], folders["prior"], None) if folders["prior"] else None
    try:
        timings = _matte_all(args, items, priors, out)
    except BenchmarkError as exc:
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    predicted = [type(item)(item.key, None, os.path.join(out, item.key + ".exr"), item.gt, item.trimap)
                 for item in items]
    try:
        rows = evaluate(predicted, convention, sequence=False)
    except EvaluationError as exc:
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    result = report(rows, convention, region="trimap unknown" if folders["trimap"] and convention.unknown
                    else "full frame")
    for frame, (seconds, active) in zip(result["frames"], timings):
        frame["seconds"], frame["active_fraction"] = seconds, active
    result["speed"] = {"images": len(timings), "seconds_per_image": sum(t for t, _ in timings) / len(timings),
                       "mean_active_fraction": sum(a for _, a in timings) / len(timings), "mattes": out}
    speed = result["speed"]
    print(json.dumps(result, indent=2) if args.json else
          table(result) + f"\n# {speed['images']} image(s) matted at {speed['seconds_per_image']:.3f} s an image "
                          f"(model time, reading and writing excluded), {speed['mean_active_fraction']:.2%} refined "
                          f"on average; mattes in {out}")
    return 0


def _matte_all(args, items, priors, out: str) -> list[tuple[float, float]]:
    """(seconds, active fraction) of each image, matted into ``out``."""
    import torch
    from tqdm import tqdm

    from .imageio import ImageReadError, read_alpha, read_rgb, write_alpha
    from .loading import ModelLoadError, load_matter
    from .validation import FrameError

    try:
        matter = load_matter(args.checkpoint, args.device, args.max_pixels)
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from exc
    os.makedirs(out, exist_ok=True)
    timings = []
    for index, item in enumerate(tqdm(items, unit="image", disable=None, file=sys.stderr)):
        try:
            frame = torch.from_numpy(read_rgb(item.pred))
            prior = None if priors is None else torch.from_numpy(read_alpha(priors[index].gt))
            start = time.perf_counter()
            alpha, _, stats = matter.matte(frame, prior=prior)
            timings.append((time.perf_counter() - start, stats.active_fraction))
        except (ImageReadError, FrameError) as exc:
            raise BenchmarkError(f"cannot matte {item.pred}: {exc}") from exc
        write_alpha(os.path.join(out, item.key + ".exr"), alpha.cpu().numpy())
    return timings
