"""Matte quality and speed on the sample clip: the figures of docs/QUALITY.md, regenerated.

    python benchmarks/bench_quality.py [--folder DIR] [--frames 24] [--size 1920x1080]

Builds the sample clip (``examples/make_sample_clip.py``), mattes it the ways the table
compares, runs ``sparsemat eval`` on each against the exact alpha, and prints one
Markdown table with the machine it ran on, the clip's build time and each matte's time
per frame (the whole ``sparsemat matte`` run over the frames written, reading and writing
included). Every figure comes from the same run, so they can be set side by side.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("sad", "mse", "grad", "conn", "dtssd")


def sparsemat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsemat.engine.cli", *args], capture_output=True, text=True,
                          check=True)


def timed(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    result = sparsemat(*args)
    return time.perf_counter() - start, result.stdout


def evaluate(pattern: str, truth: str, *options: str) -> dict:
    return json.loads(sparsemat("eval", pattern, truth, "--json", *options).stdout)["mean"]


def upsampled_prior(folder: str, frames: int) -> str:
    """The prior resized to the plate (bilinear, as the engine resizes priors), written as mattes."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, REPO)
    from sparsemat.engine.imageio import read_alpha, write_alpha

    out = os.path.join(folder, "upsampled")
    os.makedirs(out, exist_ok=True)
    for frame in range(1, frames + 1):
        size = read_alpha(os.path.join(folder, f"alpha.{frame:04d}.exr")).shape
        prior = torch.from_numpy(read_alpha(os.path.join(folder, f"prior.{frame:04d}.exr")))[None, None]
        up = F.interpolate(prior, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
        write_alpha(os.path.join(out, f"a.{frame:04d}.exr"), np.clip(up, 0.0, 1.0))
    return os.path.join(out, "a.%04d.exr")


NEW_BACKGROUND = (0.05, 0.5, 0.05)  # linear green, a colour the clip's background never has


def foreground_errors(clip: str, mattes: str, foregrounds: str, frames: int, size: tuple[int, int]) -> tuple:
    """Mean |error| of the composite over NEW_BACKGROUND against the exact one (the clip's linear
    plate with its background's share swapped for the new one), over the pixels either alpha holds
    partial: with the written foregrounds and with the decoded plate times the matte; then the same
    two with the exact alpha, its foreground unmixed here (the estimation alone, without the
    matte's errors)."""
    import numpy as np
    import torch

    from sparsemat.engine.foreground import premultiplied_foreground

    sys.path.insert(0, os.path.join(REPO, "examples"))
    from make_sample_clip import background, make_frame_linear

    from sparsemat.engine.imageio import read_alpha, read_plate
    from sparsemat.plugin import exr

    new = np.array(NEW_BACKGROUND, np.float32)
    old = np.asarray(background(size[1], size[0], 0))
    totals = np.zeros(4)
    for frame in range(1, frames + 1):
        plate, truth, _ = make_frame_linear(frame, size, 0, frames)
        matte = read_alpha(mattes % frame)
        decoded = read_plate(os.path.join(clip, f"plate.{frame:04d}.png"))[1]
        exact = plate - (1 - truth[..., None]) * old + (1 - truth[..., None]) * new
        unmixed = premultiplied_foreground(torch.from_numpy(decoded), torch.from_numpy(truth))[..., :3].numpy()
        for index, (alpha, premultiplied) in enumerate(((matte, exr.read(foregrounds % frame, ("R", "G", "B"))[0]),
                                                        (truth, unmixed))):
            a = alpha[..., None]
            partial = ((truth > 0) & (truth < 1)) | ((alpha > 0) & (alpha < 1))
            for offset, composite in enumerate((premultiplied + (1 - a) * new, a * decoded + (1 - a) * new)):
                totals[2 * index + offset] += np.abs(composite - exact)[partial].mean()
    return tuple(totals / frames)


def processor() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", help="where the clip and mattes go (default: a temporary folder)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="1920x1080")
    args = parser.parse_args()
    folder = args.folder or tempfile.mkdtemp(prefix="sparsemat-quality-")
    clip = os.path.join(folder, "sample")

    start = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(REPO, "examples", "make_sample_clip.py"), clip, "--frames",
                    str(args.frames), "--size", args.size], check=True, capture_output=True)
    build_s = time.perf_counter() - start
    plates, priors, truth, trimaps, clean = (os.path.join(clip, name) for name in (
        "plate.%04d.png", "prior.%04d.exr", "alpha.%04d.exr", "trimap.%04d.png", "clean.png"))
    rows = [("the prior (1/8 size, flawed), bilinearly upsampled", upsampled_prior(clip, args.frames), None)]
    for label, out, options in (
            ("`sparsemat matte --prior` (guided refiner, temporal reuse on)", "guided", ("--prior", priors)),
            ("`sparsemat matte --prior --no-temporal` (guided refiner)", "guided-no-temporal",
             ("--prior", priors, "--no-temporal")),
            ("`sparsemat matte --trimap` (guided refiner from the trimap alone)", "trimap", ("--trimap", trimaps)),
            ("`sparsemat matte --prior --trimap` (guided refiner)", "prior-trimap",
             ("--prior", priors, "--trimap", trimaps, "--foreground", os.path.join(folder, "foreground", "f.%04d.exr"))),
            ("`sparsemat matte --clean-plate` (guided refiner)", "clean-plate", ("--clean-plate", clean)),
            (f"`sparsemat matte --keyframe-alpha` (guided refiner; the exact mattes of frames 1 and {args.frames})",
             "keyframes", tuple(f"--keyframe-alpha={key}={os.path.join(clip, f'alpha.{key:04d}.exr')}"
                                for key in (1, args.frames)))):
        pattern = os.path.join(folder, out, "a.%04d.exr")
        seconds, summary = timed("matte", plates, pattern, "--quiet", *options)
        active = summary.split("mean active fraction ")[1].split("\n")[0]
        rows.append((label, pattern, (seconds / args.frames, active)))

    lines = [f"Measured {datetime.date.today().isoformat()} on {processor()}, "
             f"{os.cpu_count()} logical cores, Python {platform.python_version()}; the clip ({args.frames} frames, "
             f"{args.size}) took {build_s:.1f} s to build.", "",
             "| matte | SAD/1e3 | MSE x1e3 | Grad/1e3 | Conn/1e3 | dtSSD x1e2 | s a frame | refined |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, pattern, timing in rows:
        mean = evaluate(pattern, truth)
        cells = " | ".join(f"{mean[name]:.2f}" for name in METRICS)
        speed = " | - | -" if timing is None else f" | {timing[0]:.2f} | {timing[1]}"
        lines.append(f"| {label} | {cells}{speed} |")
    width, height = (int(n) for n in args.size.split("x"))
    errors = foreground_errors(clip, os.path.join(folder, "prior-trimap", "a.%04d.exr"),
                               os.path.join(folder, "foreground", "f.%04d.exr"), args.frames, (width, height))
    lines += ["", "Composites over a new background (linear green) against the exact one, mean |error| x1e3 in the "
                  "pixels either alpha holds partial:", "",
              "| alpha | the unmixed foreground | the plate times the alpha |", "|---|---:|---:|",
              f"| `--prior --trimap`'s matte (its `--foreground`) | {errors[0] * 1e3:.2f} | {errors[1] * 1e3:.2f} |",
              f"| the exact alpha (the estimation alone) | {errors[2] * 1e3:.2f} | {errors[3] * 1e3:.2f} |"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
