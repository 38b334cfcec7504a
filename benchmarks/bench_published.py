#!/usr/bin/env python
"""Ours against the published SparseMat pipeline, emulated, on the same frames and band, in one run.

    python benchmarks/bench_published.py [--sizes 1080p,4k,8k] [--frames 3] [--frames-8k 2]

The published code on CPU, at its only correct setting with spconv 2.x, emulated in this process:
one torch thread for the whole frame, the refine through spconv (``--backend spconv``: its modules
built once, as the published model builds them), and the masks by max-pool dilation and a box-sum
convolution in float32 (``sparsity.dilate`` and ``sparsity.box_sum`` swapped for ``F.max_pool2d``
and ``F.conv2d``, what the published code calls). The prior network, the frame's normalization and
the composition are ours in both (the same operations; the published normalization makes one more
full-frame copy, which this leaves out, in its favour). Ours: ``Matter(model, "cpu")`` as the
engine runs it, the torch backend at torch's default thread count.

Both see the same synthetic plate and coarse prior as ``bench_engine.py`` (so the same band), one
warm-up frame each, then the timed frames alternate between them, and their alphas are compared
at the fixture tolerance. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_engine import LABELS, PRIOR_BLUR, SIZES, make_plate, make_prior  # noqa: E402


@contextmanager
def published_setting():
    """One thread, and the published code's pooling and convolution masks, for the length of the block."""
    import torch
    import torch.nn.functional as F

    from sparsemat.engine import sparsity

    def dilate(mask, size=sparsity.DILATION):
        return F.max_pool2d(mask, size, stride=1, padding=size // 2)

    def box_sum(x, size=sparsity.BOX):
        return F.conv2d(x, torch.ones(1, 1, size, size, dtype=x.dtype), padding=size // 2)

    threads, saved = torch.get_num_threads(), (sparsity.dilate, sparsity.box_sum)
    torch.set_num_threads(1)
    sparsity.dilate, sparsity.box_sum = dilate, box_sum
    try:
        yield
    finally:
        sparsity.dilate, sparsity.box_sum = saved
        torch.set_num_threads(threads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1080p,4k,8k")
    parser.add_argument("--frames", type=int, default=3, help="timed frames of each, after a warm-up (median)")
    parser.add_argument("--frames-8k", type=int, default=2)
    parser.add_argument("--fixtures", default=os.environ.get("SPARSEMAT_FIXTURES") or
                        os.path.join(os.path.dirname(HERE), "..", "shared", "fixtures", "official"))
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from sparsemat.engine.matting import Matter
    from sparsemat.engine.model import SparseMat

    checkpoint = os.path.join(tempfile.mkdtemp(prefix="sparsemat-ckpt-"), "seed1.pth")
    subprocess.run([sys.executable, os.path.join(args.fixtures, "make_ckpt.py"), "1", checkpoint], check=True,
                   capture_output=True)
    ours = Matter(SparseMat.from_checkpoint(checkpoint), "cpu")
    published = Matter(SparseMat.from_checkpoint(checkpoint), "cpu", backend="spconv")

    def run(matter, frame, prior, setting=None):
        start = time.perf_counter()
        if setting is None:
            alpha, _, stats = matter.matte(frame, prior=prior)
        else:
            with setting():
                alpha, _, stats = matter.matte(frame, prior=prior)
        return (time.perf_counter() - start) * 1000.0, alpha.numpy(), stats

    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (ours), 1 thread (published)", flush=True)
    for size in (s.strip() for s in args.sizes.split(",") if s.strip()):
        height, width = SIZES[size]
        plate, truth, _ = make_plate(height, width)
        prior = make_prior(truth, blur=PRIOR_BLUR)
        count = args.frames_8k if size == "8k" else args.frames
        times = {"ours": [], "published": []}
        run(ours, plate, prior)
        run(published, plate, prior, published_setting)
        for index in range(count):
            order = (("ours", ours, None), ("published", published, published_setting))
            for name, matter, setting in (order if index % 2 == 0 else order[::-1]):
                ms, alpha, stats = run(matter, plate, prior, setting)
                times[name].append(ms)
                if name == "ours":
                    our_alpha, band = alpha, stats.active_fraction
                else:
                    their_alpha = alpha
            print(f"  {size} round {index + 1}: ours {times['ours'][-1]:,.0f} ms, "
                  f"published {times['published'][-1]:,.0f} ms", flush=True)
        diff = np.abs(our_alpha.astype(np.float64) - their_alpha)
        ours_ms, theirs_ms = statistics.median(times["ours"]), statistics.median(times["published"])
        rows.append(f"| {LABELS[size]} | {band:.2%} | {count} | {theirs_ms:,.0f} | {ours_ms:,.0f} | "
                    f"{theirs_ms / ours_ms:.2f}x | {diff.mean():.1e} / {diff.max():.1e} |")
    print("\n| Plate | Band | Frames | Published, emulated (ms) | Ours (ms) | Speed-up | Alpha difference mean / max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
