"""Fine-tuning on a shot's keyframes, measured on the sample clip: docs/QUALITY.md's table.

    python benchmarks/bench_finetune.py [--folder DIR] [--size 1920x1080] [--steps 150] [--keys 1,12,24]

Builds the sample clip (``examples/make_sample_clip.py``) and the seeded random checkpoint of
the fixtures (``make_ckpt.py`` seed 1: the published format, random weights), then, on the
frames that are not keyframes: the upsampled prior, the guided refiner (``--prior``, no
checkpoint), the network from the seeded checkpoint with ``--prior`` before fine-tuning, and
the same after ``sparsemat finetune`` on the keyframes' exact mattes with ``--prior``. Prints
one Markdown table (``sparsemat eval``'s metrics on the held-out frames) and what the
fine-tune cost. Every figure comes from one run.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time

from bench_quality import METRICS, REPO, evaluate, processor, timed, upsampled_prior

FIXTURES = os.environ.get("SPARSEMAT_FIXTURES", os.path.join(os.path.dirname(REPO), "shared", "fixtures", "official"))


def held_out_frames(frames: int, keys: list[int]) -> str:
    """The frames that are not keyframes, as a --frames range."""
    return ",".join(str(frame) for frame in range(1, frames + 1) if frame not in keys)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", help="where the clip, checkpoints and mattes go (default: a temporary folder)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--keys", default="1,12,24", help="the keyframes fine-tuned on (default 1,12,24)")
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning steps (default 150)")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--learning-rate", default="1e-4")
    args = parser.parse_args()
    keys = [int(key) for key in args.keys.split(",")]
    folder = args.folder or tempfile.mkdtemp(prefix="sparsemat-finetune-")
    clip = os.path.join(folder, "sample")
    subprocess.run([sys.executable, os.path.join(REPO, "examples", "make_sample_clip.py"), clip, "--frames",
                    str(args.frames), "--size", args.size], check=True, capture_output=True)
    seeded = os.path.join(folder, "seed1.pth")
    subprocess.run([sys.executable, os.path.join(FIXTURES, "make_ckpt.py"), "1", seeded], check=True)
    plates, priors, truth = (os.path.join(clip, name) for name in ("plate.%04d.png", "prior.%04d.exr", "alpha.%04d.exr"))
    shot = os.path.join(folder, "shot.pth")
    start = time.perf_counter()
    _, finetuned = timed("finetune", plates, "--prior", priors, "--checkpoint", seeded, "--out", shot, "--quiet",
                         "--steps", str(args.steps), "--crop", str(args.crop), "--batch", str(args.batch),
                         "--learning-rate", args.learning_rate,
                         *(f"--keyframe={key}={truth % key}" for key in keys))
    finetune_s = time.perf_counter() - start

    rows = [("the prior (1/8 size, flawed), bilinearly upsampled", upsampled_prior(clip, args.frames), None)]
    for label, out, options in (
            ("`--prior`, guided refiner (no checkpoint)", "guided", ("--prior", priors)),
            ("`--prior --checkpoint seed1.pth` (the seeded checkpoint, before fine-tuning)", "before",
             ("--prior", priors, "--checkpoint", seeded)),
            (f"`--prior --checkpoint shot.pth` (after fine-tuning on frames {args.keys})", "after",
             ("--prior", priors, "--checkpoint", shot))):
        pattern = os.path.join(folder, out, "a.%04d.exr")
        seconds, _ = timed("matte", plates, pattern, "--quiet", *options)
        rows.append((label, pattern, seconds / args.frames))

    held_out = held_out_frames(args.frames, keys)
    lines = [f"Measured {datetime.date.today().isoformat()} on {processor()}, {os.cpu_count()} logical cores, "
             f"Python {platform.python_version()}: the sample clip ({args.frames} frames, {args.size}); "
             f"`sparsemat finetune` on frames {args.keys} ({args.steps} steps of {args.batch} crops of {args.crop} px, learning rate {args.learning_rate}) "
             f"took {finetune_s:.0f} s, loading and writing included. Scored on the {args.frames - len(keys)} other "
             f"frames; every matte is a whole `sparsemat matte` run over all {args.frames} frames (temporal reuse on).",
             "", "| matte | SAD/1e3 | MSE x1e3 | Grad/1e3 | Conn/1e3 | dtSSD x1e2 | s a frame |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, pattern, seconds in rows:
        mean = evaluate(pattern, truth, "--frames", held_out)
        cells = " | ".join("-" if mean[name] is None else f"{mean[name]:.2f}" for name in METRICS)
        lines.append(f"| {label} | {cells} | {'-' if seconds is None else f'{seconds:.2f}'} |")
    lines += ["", finetuned.strip()]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
