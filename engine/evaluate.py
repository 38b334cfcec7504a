"""``sparsemat eval PRED GT``: matting benchmark errors of mattes against ground truth.

    sparsemat eval out/alpha.####.exr gt/alpha.####.exr [--trimap PATTERN] [--frames RANGE] [--json]

PRED and GT are both single files or both sequence patterns (the syntax of ``sparsemat matte``).
A table has one row per frame and a mean row; ``--json`` prints the same numbers as JSON. Values
are reported with the benchmark scalings (``metrics.SCALING``). Alpha is clipped to [0, 1] first,
as the 8-bit mattes of the benchmarks are.
"""
from __future__ import annotations

import json
import os
import sys

from .validation import EXIT_FAILED, UsageError

# numpy and .metrics are imported inside the functions: building the parser stays instant.
IMAGE_METRICS = ("sad", "mse", "grad", "conn")


class EvaluationError(Exception):
    """A frame could not be evaluated (unreadable, or sizes that do not match)."""


def add_eval_command(commands) -> None:
    """Add the ``eval`` subcommand to an argparse subparsers object."""
    parser = commands.add_parser(
        "eval", help="matting errors (SAD, MSE, Grad, Conn, dtSSD) of mattes against ground truth",
        description="Matting benchmark errors of predicted mattes against ground truth, per frame and "
                    "averaged, with the usual benchmark scalings (stated in the output). Alpha is clipped to [0, 1]; dtSSD is reported for each "
                    "frame whose previous frame number is also evaluated.")
    parser.add_argument("pred", metavar="PRED", help="predicted matte: file or sequence pattern (clip/a.%%04d.exr, clip/a.####.exr)")
    parser.add_argument("gt", metavar="GT", help="ground-truth matte: file, or pattern when PRED is one")
    parser.add_argument("--trimap", metavar="PATTERN",
                        help="evaluate only the trimap's unknown region (values strictly between 0 and 1); "
                             "a sequence pattern, or one file for every frame")
    parser.add_argument("--frames", metavar="RANGE", help="frame range such as 1001-1100, 1-10x2 or 1,3,5-7 "
                                         "(default: the frames of PRED on disk)")
    parser.add_argument("--json", action="store_true",
                        help='print {"scaling": ..., "frames": [...], "mean": ...} instead of a table')
    parser.set_defaults(run=run_eval)


def run_eval(args) -> int:
    plan = _plan(args.pred, args.gt, args.trimap, args.frames)
    try:
        rows = list(_evaluate(plan))
    except EvaluationError as exc:
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    report = _report(rows, plan)
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 0


def _plan(pred_text: str, gt_text: str, trimap_text: str | None, frames_text: str | None):
    """[(frame, pred path, gt path, trimap path or None)], after checking every file exists."""
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
    plan = [(frame, pred.path(frame), gt.path(frame), trimap.path(frame) if trimap else None) for frame in frames]
    for role, index in (("PRED", 1), ("GT", 2), ("trimap", 3)):
        missing = [row for row in plan if row[index] is not None and not os.path.isfile(row[index])]
        if missing:
            where = "" if missing[0][0] is None else f" for frame {missing[0][0]}"
            more = f" ({len(missing)} missing in all)" if len(missing) > 1 else ""
            raise UsageError(f"{role} file not found{where}: {missing[0][index]}{more}")
    return plan


def _evaluate(plan):
    """Per-frame rows of raw metric values; dtSSD against the previous frame number when evaluated."""
    from . import metrics

    previous = None  # (frame, pred, gt) of the last row
    for frame, pred_path, gt_path, trimap_path in plan:
        pred, gt = _read(pred_path), _read(gt_path)
        if pred.shape != gt.shape:
            raise EvaluationError(f"sizes differ: PRED {pred_path} is {_size(pred)}, GT {gt_path} is {_size(gt)}")
        mask = None
        if trimap_path is not None:
            trimap = _read(trimap_path, clip=False)
            if trimap.shape != gt.shape:
                raise EvaluationError(f"sizes differ: trimap {trimap_path} is {_size(trimap)}, "
                                      f"GT {gt_path} is {_size(gt)}")
            mask = metrics.unknown_region(trimap)
            if not mask.any():  # every metric would be 0 with nothing evaluated: say so
                print(f"sparsemat: warning: trimap {trimap_path} has no unknown pixels (values strictly between "
                      f"0 and 1): nothing is evaluated in it", file=sys.stderr)
        row = {"frame": frame, "pred": pred_path, "gt": gt_path, "trimap": trimap_path,
               "pixels": int(gt.size if mask is None else mask.sum()),
               "sad": metrics.sad(pred, gt, mask), "mse": metrics.mse(pred, gt, mask),
               "grad": metrics.gradient_error(pred, gt, mask), "conn": metrics.connectivity_error(pred, gt, mask),
               "dtssd": None}
        if previous is not None and frame is not None and previous[0] == frame - 1:
            if previous[1].shape != pred.shape:
                raise EvaluationError(f"frame {frame} is {_size(pred)} but frame {previous[0]} is "
                                      f"{_size(previous[1])}: {pred_path}")
            row["dtssd"] = metrics.dtssd_frame(pred, previous[1], gt, previous[2], mask)
        previous = (frame, pred, gt)
        yield row


def _read(path: str, clip: bool = True):
    import numpy as np

    from .imageio import ImageReadError, read_alpha

    try:
        alpha = read_alpha(path)
    except ImageReadError as exc:
        raise EvaluationError(str(exc)) from exc
    # float64 once here: every metric works in it, and would otherwise convert each frame again.
    return np.clip(alpha.astype(np.float64), 0.0, 1.0) if clip else alpha


def _size(alpha) -> str:
    return f"{alpha.shape[1]}x{alpha.shape[0]}"


def _report(rows, plan) -> dict:
    """Scaled values: {"scaling", "labels", "region", "frames", "mean"}."""
    import numpy as np

    from . import metrics

    sequence = plan[0][0] is not None
    names = IMAGE_METRICS + (("dtssd",) if sequence else ())
    frames = []
    for row in rows:
        scaled = {name: None if row[name] is None else row[name] * metrics.SCALING[name] for name in names}
        frames.append({key: row[key] for key in ("frame", "pred", "gt", "trimap", "pixels")} | scaled)
    mean = {}
    for name in names:
        values = [frame[name] for frame in frames if frame[name] is not None]
        mean[name] = float(np.mean(values)) if values else None
    return {
        "scaling": {name: metrics.SCALING[name] for name in names},
        "labels": {name: metrics.SCALING_LABELS[name] for name in names},
        "region": "trimap unknown" if plan[0][3] is not None else "full frame",
        "frames": frames,
        "mean": mean,
    }


def _table(report: dict) -> str:
    names = list(report["labels"])
    labels = [report["labels"][name] for name in names]
    keys = [("-" if frame["frame"] is None else str(frame["frame"])) for frame in report["frames"]]
    if keys == ["-"]:
        keys = [os.path.basename(report["frames"][0]["pred"])]
    first = max(len("frame"), len("mean"), *map(len, keys))
    widths = [max(len(label), 10) for label in labels]

    def line(key, values):
        cells = ["-" if value is None else f"{value:.4f}" for value in values]
        return "  ".join([key.ljust(first)] + [cell.rjust(width) for cell, width in zip(cells, widths)])

    lines = [f"# scaling: {', '.join(labels)}; region: {report['region']}",
             "  ".join(["frame".ljust(first)] + [label.rjust(width) for label, width in zip(labels, widths)])]
    lines += [line(key, [frame[name] for name in names]) for key, frame in zip(keys, report["frames"])]
    lines.append(line("mean", [report["mean"][name] for name in names]))
    return "\n".join(lines)
