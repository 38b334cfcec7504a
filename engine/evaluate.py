"""``sparsemat eval PRED GT``: matting benchmark errors of mattes against ground truth.

    sparsemat eval out/alpha.####.exr gt/alpha.####.exr [--trimap PATTERN] [--frames RANGE]
    sparsemat eval PRED_DIR GT_DIR [--trimap-dir DIR]          # a dataset: images matched by name
        [--convention ours|dim|rvm] [--json | --csv]

PRED and GT are both single files, both sequence patterns (the syntax of ``sparsemat matte``),
or both folders of images (a dataset, such as Composition-1k's test set: each file of PRED
matched by its name, without the extension, in GT and the trimap folder). A table has one row
per frame or image and a mean row. ``--convention`` picks whose code the numbers reproduce
(``metrics.CONVENTIONS``): ours by default, the Deep Image Matting MATLAB code (``dim``), or
RobustVideoMatting's (``rvm``); each says how it reads files, which region it evaluates, and
how it scales.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass

from .validation import EXIT_FAILED, UsageError

# numpy and .metrics are imported inside the functions: building the parser stays instant.


class EvaluationError(Exception):
    """A frame could not be evaluated (unreadable, or sizes that do not match)."""


@dataclass(frozen=True)
class Item:
    """One evaluated matte: its row label, its frame number (None for an image), and its files."""

    key: str
    frame: int | None
    pred: str
    gt: str
    trimap: str | None


def add_eval_command(commands) -> None:
    """Add the ``eval`` subcommand to an argparse subparsers object."""
    parser = commands.add_parser(
        "eval", help="matting errors (SAD, MSE, Grad, Conn, dtSSD) of mattes against ground truth",
        description="Matting benchmark errors of predicted mattes against ground truth, per frame (or image) and "
                    "averaged, with the usual benchmark scalings (stated in the output). Alpha is clipped to [0, 1]. "
                    "--convention ours (default): the standard definitions, exact decimal connectivity levels "
                    "compared at each file's own precision (8- and 16-bit files as exact k/255, float files as "
                    "stored), the trimap's unknown region as every value strictly between 0 and 1, dtSSD for each "
                    "frame whose previous frame number is evaluated. dim: the Deep Image Matting MATLAB code "
                    "(Composition-1k): unknown = 128 only, mattes stretched to their own min-max (mat2gray) "
                    "before the gradient, MSE unscaled. rvm: RobustVideoMatting's evaluate_lr.py: whole frames, "
                    "MAD x1e3 instead of SAD, stretched gradients, float32 throughout, a clip's dtSSD counting 0 "
                    "for its first frame.")
    parser.add_argument("pred", metavar="PRED", help="predicted matte: file, sequence pattern (clip/a.%%04d.exr, "
                                                     "clip/a.####.exr) or folder of images")
    parser.add_argument("gt", metavar="GT", help="ground-truth matte: of the same kind as PRED")
    parser.add_argument("--trimap", metavar="PATTERN",
                        help="evaluate only the trimap's unknown region (by the convention's rule); "
                             "a sequence pattern, or one file for every frame")
    parser.add_argument("--trimap-dir", metavar="DIR", help="for folders: the trimaps, matched by file name")
    parser.add_argument("--frames", metavar="RANGE", help="frame range such as 1001-1100, 1-10x2 or 1,3,5-7 "
                                                          "(default: the frames of PRED on disk)")
    parser.add_argument("--convention", choices=("ours", "dim", "rvm"), default="ours",
                        help="whose code the numbers reproduce (default ours; see above)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help='print {"convention", "scaling", "frames": [...], "mean": ...} instead of a table')
    output.add_argument("--csv", action="store_true", help="print one CSV row per frame or image, then the mean")
    parser.set_defaults(run=run_eval)


def run_eval(args) -> int:
    from .metrics import CONVENTIONS

    convention = CONVENTIONS[args.convention]
    items = plan(args.pred, args.gt, args.trimap, args.trimap_dir, args.frames)
    if convention.unknown is None and any(item.trimap for item in items):
        raise UsageError(f"the {convention.name} convention evaluates whole frames: leave out the trimap")
    try:
        rows = evaluate(items, convention, sequence=items[0].frame is not None)
    except EvaluationError as exc:
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    result = report(rows, convention, region="trimap unknown" if items[0].trimap else "full frame")
    print(json.dumps(result, indent=2) if args.json else as_csv(result) if args.csv else table(result))
    return 0


def plan(pred_text: str, gt_text: str, trimap_text: str | None, trimap_dir: str | None,
         frames_text: str | None) -> list[Item]:
    """The items to evaluate, after checking every file exists."""
    if os.path.isdir(pred_text) or os.path.isdir(gt_text):
        if not (os.path.isdir(pred_text) and os.path.isdir(gt_text)):
            raise UsageError("PRED and GT must both be folders (a dataset), both sequence patterns or both files")
        if trimap_text or frames_text:
            raise UsageError("for folders, give --trimap-dir (not --trimap) and no --frames")
        return dataset_items(pred_text, gt_text, trimap_dir)
    if trimap_dir:
        raise UsageError("--trimap-dir is for folders of images; for files and sequences give --trimap")
    from .sequence import SequenceError, check_same_kind, parse_pattern, select_frames

    try:
        pred, gt = parse_pattern(pred_text), parse_pattern(gt_text)
        trimap = parse_pattern(trimap_text) if trimap_text else None
        check_same_kind(pred, "PRED", gt, "GT")
        if trimap is not None and trimap.is_sequence and not pred.is_sequence:
            raise UsageError("--trimap is a sequence pattern but PRED is a single file")
        frames = select_frames(pred, frames_text)
    except SequenceError as exc:
        raise UsageError(str(exc)) from exc
    items = [Item("-" if frame is None else str(frame), frame, pred.path(frame), gt.path(frame),
                  trimap.path(frame) if trimap else None) for frame in frames]
    if items[0].frame is None:
        items[0] = Item(os.path.basename(items[0].pred), None, items[0].pred, items[0].gt, items[0].trimap)
    for role in ("pred", "gt", "trimap"):
        missing = [item for item in items if getattr(item, role) is not None and not os.path.isfile(getattr(item, role))]
        if missing:
            where = "" if missing[0].frame is None else f" for frame {missing[0].frame}"
            more = f" ({len(missing)} missing in all)" if len(missing) > 1 else ""
            name = {"pred": "PRED", "gt": "GT", "trimap": "trimap"}[role]
            raise UsageError(f"{name} file not found{where}: {getattr(missing[0], role)}{more}")
    return items


def dataset_items(pred_dir: str, gt_dir: str, trimap_dir: str | None) -> list[Item]:
    """PRED's images, each matched by its name without the extension in GT (and the trimaps)."""
    from .sequence import images_by_name as images

    preds, gts = images(pred_dir), images(gt_dir)
    trimaps = images(trimap_dir) if trimap_dir else {}
    if not preds:
        raise UsageError(f"no images in PRED folder {pred_dir}")
    for name, found, folder in (("GT", gts, gt_dir), ("trimap", trimaps, trimap_dir)):
        if name == "trimap" and not trimap_dir:
            continue
        missing = [stem for stem in preds if stem not in found]
        if missing:
            more = f" ({len(missing)} missing in all)" if len(missing) > 1 else ""
            raise UsageError(f"{name} folder {folder} has no image named {missing[0]} (for {preds[missing[0]]}){more}")
    return [Item(stem, None, path, gts[stem], trimaps.get(stem)) for stem, path in preds.items()]


def read(path: str, convention, clip: bool = True):
    """The matte as the convention's code reads it: 8- and 16-bit files as k / 255 (or 65535),
    exactly in float64 or as float32 arithmetic gives it; float files as stored (float64 for
    ``dim``); clipped to [0, 1]."""
    import numpy as np

    from .imageio import ImageReadError, read_matte

    try:
        alpha, maximum = read_matte(path)
    except ImageReadError as exc:
        raise EvaluationError(str(exc)) from exc
    if maximum is not None:
        stored = np.round(alpha.astype(np.float64) * maximum)
        alpha = stored.astype(np.float32) / np.float32(maximum) if convention.float32 else stored / maximum
    elif not convention.float32 and convention.name == "dim":
        alpha = alpha.astype(np.float64)
    return np.clip(alpha, 0.0, 1.0) if clip else alpha


def evaluate(items: list[Item], convention, sequence: bool) -> list[dict]:
    """Per item, the raw metric values of the convention; dtSSD for a sequence's frames."""
    from tqdm import tqdm

    from . import metrics

    functions = {"sad": metrics.sad, "mad": metrics.mad, "mse": metrics.mse, "conn": metrics.connectivity_error,
                 "grad": lambda p, g, m: metrics.gradient_error(p, g, m, stretch=convention.stretch)}
    rows, previous = [], None  # (frame, pred, gt) of the last row
    for index, item in enumerate(tqdm(items, unit="frame" if sequence else "image", disable=None, leave=False,
                                      file=sys.stderr)):
        pred, gt = read(item.pred, convention), read(item.gt, convention)
        if pred.shape != gt.shape:
            raise EvaluationError(f"sizes differ: PRED {item.pred} is {_size(pred)}, GT {item.gt} is {_size(gt)}")
        mask = None
        if item.trimap is not None:
            trimap = read(item.trimap, convention, clip=False)
            if trimap.shape != gt.shape:
                raise EvaluationError(f"sizes differ: trimap {item.trimap} is {_size(trimap)}, GT {item.gt} is "
                                      f"{_size(gt)}")
            mask = convention.unknown(trimap)
            if not mask.any():  # every metric would be 0 with nothing evaluated: say so
                print(f"sparsemat: warning: trimap {item.trimap} has no unknown pixels: nothing is evaluated in it",
                      file=sys.stderr)
        row = {"key": item.key, "frame": item.frame, "pred": item.pred, "gt": item.gt, "trimap": item.trimap,
               "pixels": int(gt.size if mask is None else mask.sum())}
        row.update({name: functions[name](pred, gt, mask) for name in convention.names if name != "dtssd"})
        if sequence and "dtssd" in convention.names:
            row["dtssd"] = _dtssd(convention, index, item, pred, gt, mask, previous)
        previous = (item.frame, pred, gt)
        rows.append(row)
    return rows


def _dtssd(convention, index: int, item: Item, pred, gt, mask, previous):
    """Ours: against the previous frame number when it is evaluated; rvm: against the previous
    row, 0 for the first."""
    from . import metrics

    if convention.first_frame_dtssd:
        return 0.0 if index == 0 else metrics.dtssd_frame(pred, previous[1], gt, previous[2], mask)
    if previous is None or item.frame is None or previous[0] != item.frame - 1:
        return None
    if previous[1].shape != pred.shape:
        raise EvaluationError(f"frame {item.frame} is {_size(pred)} but frame {previous[0]} is {_size(previous[1])}: "
                              f"{item.pred}")
    return metrics.dtssd_frame(pred, previous[1], gt, previous[2], mask)


def _size(alpha) -> str:
    return f"{alpha.shape[1]}x{alpha.shape[0]}"


def report(rows: list[dict], convention, region: str) -> dict:
    """Scaled values: {"convention", "scaling", "labels", "region", "frames", "mean"}."""
    import numpy as np

    names = [name for name in convention.names if name != "dtssd" or "dtssd" in rows[0]]
    frames = []
    for row in rows:
        scaled = {name: None if row[name] is None else row[name] * convention.scaling[name] for name in names}
        frames.append({key: row[key] for key in ("key", "frame", "pred", "gt", "trimap", "pixels")} | scaled)
    mean = {}
    for name in names:
        values = [frame[name] for frame in frames if frame[name] is not None]
        mean[name] = float(np.mean(values)) if values else None
    return {"convention": convention.name, "reproduces": convention.reproduces,
            "scaling": {name: convention.scaling[name] for name in names},
            "labels": {name: convention.labels[name] for name in names},
            "region": region, "frames": frames, "mean": mean}


def table(result: dict) -> str:
    names = list(result["labels"])
    labels = [result["labels"][name] for name in names]
    keys = [frame["key"] for frame in result["frames"]]
    first = max(len("frame"), len("mean"), *map(len, keys))
    widths = [max(len(label), 10) for label in labels]

    def line(key, values):
        cells = ["-" if value is None else f"{value:.4f}" for value in values]
        return "  ".join([key.ljust(first)] + [cell.rjust(width) for cell, width in zip(cells, widths)])

    lines = [f"# convention: {result['convention']}; scaling: {', '.join(labels)}; region: {result['region']}",
             "  ".join(["frame".ljust(first)] + [label.rjust(width) for label, width in zip(labels, widths)])]
    lines += [line(key, [frame[name] for name in names]) for key, frame in zip(keys, result["frames"])]
    lines.append(line("mean", [result["mean"][name] for name in names]))
    return "\n".join(lines)


def as_csv(result: dict) -> str:
    names = list(result["labels"])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["frame", "pred", "gt", "trimap", "pixels", *(result["labels"][name] for name in names)])
    for frame in result["frames"]:
        writer.writerow([frame["key"], frame["pred"], frame["gt"], frame["trimap"] or "", frame["pixels"],
                         *("" if frame[name] is None else f"{frame[name]:.6g}" for name in names)])
    writer.writerow(["mean", "", "", "", "", *("" if result["mean"][name] is None else f"{result['mean'][name]:.6g}"
                                               for name in names)])
    return out.getvalue().rstrip("\n")
