"""Temporal reuse on a static shot: what the second and later frames cost against the first.

    python benchmarks/bench_static.py [--size 1920x1080] [--frames 6] [--checkpoint CKPT]

The sample clip's first frame (examples/make_sample_clip.py) repeated, matted with
temporal reuse on and off, by the guided refiner (its prior) and, when a checkpoint
is given, by the SparseMat network too. Prints per-stage milliseconds per frame and
checks that reuse changed no alpha.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from make_sample_clip import _parse_size, make_frame  # noqa: E402


def run(matter, frame, prior, frames: int, temporal: bool):
    state, rows, alphas = None, [], []
    for _ in range(frames):
        alpha, new_state, stats = matter.matte(frame, state if temporal else None, prior=prior)
        state = new_state
        rows.append(stats)
        alphas.append(alpha)
    return rows, alphas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=_parse_size, default="1920x1080", help="WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--checkpoint")
    args = parser.parse_args()
    width, height = args.size

    from sparsemat.engine.matting import Matter
    from sparsemat.engine.model import SparseMat

    plate, _, prior = make_frame(1, (width, height))
    frame, prior = torch.from_numpy(plate), torch.from_numpy(prior)
    matters = {"guided": Matter(None)}
    if args.checkpoint:
        matters["SparseMat"] = Matter(SparseMat.from_checkpoint(args.checkpoint))
    print(f"static {width}x{height} shot, {args.frames} frames, {torch.get_num_threads()} threads\n")
    print("| refiner | temporal | first frame ms | later frames ms (median) | later / first | active, later frames | alphas equal |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for name, matter in matters.items():
        matter.matte(frame, prior=prior)  # warm-up
        plain, plain_alphas = run(matter, frame, prior, args.frames, temporal=False)
        for temporal in (False, True):
            rows, alphas = (plain, plain_alphas) if not temporal else run(matter, frame, prior, args.frames, True)
            first = sum(rows[0].ms.values())
            later = statistics.median(sum(r.ms.values()) for r in rows[1:])
            equal = all(torch.equal(a, b) for a, b in zip(alphas, plain_alphas))
            print(f"| {name} | {'on' if temporal else 'off'} | {first:.0f} | {later:.0f} | {later / first:.2f} | "
                  f"{statistics.median(r.active_fraction for r in rows[1:]):.2%} | {equal} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
