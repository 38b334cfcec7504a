"""How much moving a frame to the engine and its alpha back costs, per transport.

    python benchmarks/bench_transport.py --checkpoint CKPT [--sizes 1080p,4k] [--repeats 5] [--out FILE]

For each size and transport (inline over ipc, inline over tcp, shared memory, file
path), a real engine process mattes the same frame repeatedly; shared memory once more
with a full-resolution prior (a host's roto or coarse matte), which travels in a block of
its own. The transport cost of a request is the client's wall time minus the engine's
own compute time (its reported total less its decode time), so it counts sending the
pixels, decoding them into the engine's input, and the alpha's way back. Each request is set against
a plain memory copy of the frame (``np.copyto`` into a warm array) timed just before
it. The prior is given as fully opaque, so no pixel is refined and the compute part
stays small and steady. The round trip of an empty request, and the transport of a
64 x 64 frame through shared memory, show the fixed cost of a request (socket and thread
hand-offs, waking threads that slept through the compute), which no transport can go
below; the shared-memory figure less that fixed cost is the part that grows with the frame.

Engine overhead: the same frames through the engine against the in-process
``Matter`` (in a child process set up as ``sparsemat matte`` is), as a ratio of wall
times. This process stays a plain host: no torch, the default allocator.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

SIZES = {"1080p": (1080, 1920), "4k": (2160, 3840), "8k": (4320, 7680)}


def plate(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 37.0) * np.cos(y / 53.0)], axis=-1)
    return np.ascontiguousarray(rgb.astype(np.float32))


def timed_copy_ms(frame: np.ndarray, target: np.ndarray) -> float:
    start = time.perf_counter()
    np.copyto(target, frame)
    return (time.perf_counter() - start) * 1000.0


def start_engine(address: str, checkpoint: str, runtime: str) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": runtime}
    subprocess.run(["sparsemat", "engine", "start", "--address", address, "--checkpoint", checkpoint,
                    "--device", "cpu"], check=True, env=env, stdout=subprocess.DEVNULL)


def stop_engine(address: str, runtime: str) -> None:
    subprocess.run(["sparsemat", "engine", "stop", "--address", address], env={**os.environ, "XDG_RUNTIME_DIR": runtime},
                   stdout=subprocess.DEVNULL)


def transport_runs(client, frame: np.ndarray, prior: np.ndarray, repeats: int, **how) -> dict:
    """Per request: transport ms, a frame copy timed just before it, and the round trip ms.

    Pairing each request with its own copy keeps the ratio honest on a noisy machine:
    both see the same moment's memory bandwidth and CPU contention."""
    target = np.empty_like(frame)
    image = frame if "path" not in how else None
    client.matte("bench", 0, image, prior=prior, temporal=False, **how)  # warm-up
    runs = {"transport": [], "copy": [], "ratio": [], "total": []}
    for index in range(repeats):
        copy = timed_copy_ms(frame, target)
        start = time.perf_counter()
        _, stats = client.matte("bench", index * 2 + 2, image, prior=prior, temporal=False, **how)
        wall = (time.perf_counter() - start) * 1000.0
        moved = wall - (stats["ms"]["total"] - stats["ms"]["read"])
        for key, value in (("transport", moved), ("copy", copy), ("ratio", moved / copy), ("total", wall)):
            runs[key].append(value)
    return {key: statistics.median(values) for key, values in runs.items()}


def empty_request_ms(client, repeats: int) -> float:
    """Round trip of a request with no pixels through the engine's worker (a reset of an unknown stream)."""
    samples = []
    for _ in range(max(repeats, 20)):
        start = time.perf_counter()
        client.reset("no-such-stream")
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def in_process_ms(checkpoint: str, size: str, repeats: int) -> float:
    """Median ms of the same frame through ``Matter`` in a child process set up as ``sparsemat matte``
    sets itself up; this process stays a plain host (no torch, the default allocator)."""
    result = subprocess.run([sys.executable, __file__, "--checkpoint", checkpoint, "--sizes", size,
                             "--repeats", str(repeats), "--in-process"], check=True, capture_output=True, text=True)
    return float(result.stdout.split()[-1])


def run_in_process(checkpoint: str, size: str, repeats: int) -> None:
    from sparsemat.engine.allocator import keep_freed_memory

    keep_freed_memory()
    import torch

    from sparsemat.engine.matting import Matter
    from sparsemat.engine.model import SparseMat

    height, width = SIZES[size]
    frame, prior = torch.from_numpy(plate(height, width)), torch.ones((height // 8, width // 8))
    matter = Matter(SparseMat.from_checkpoint(checkpoint))
    matter.matte(frame, prior=prior)  # warm-up, as the engine's first request
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        matter.matte(frame, prior=prior)
        samples.append((time.perf_counter() - start) * 1000.0)
    print(statistics.median(samples))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--sizes", default="1080p,4k")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="append the Markdown tables to this file")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        run_in_process(args.checkpoint, args.sizes, args.repeats)
        return 0

    import OpenImageIO as oiio

    from sparsemat.plugin.client import EngineClient

    runtime = tempfile.mkdtemp(prefix="sparsemat-bench-")
    os.chmod(runtime, 0o700)
    addresses = {"ipc": f"ipc://{runtime}/bench.sock", "tcp": "tcp://127.0.0.1:47311"}
    for address in addresses.values():
        start_engine(address, args.checkpoint, runtime)
    lines = ["| size | transport | transport ms | frame copy ms | transport / copy | round trip ms |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    overhead = ["| size | in-process ms | engine (shm) ms | engine / in-process |", "| --- | ---: | ---: | ---: |"]
    clients = {name: EngineClient(address, timeout=60) for name, address in addresses.items()}
    try:
        empty = empty_request_ms(clients["ipc"], args.repeats)
        fixed = transport_runs(clients["ipc"], plate(64, 64), np.ones((8, 8), np.float32), max(args.repeats, 20),
                               transport="shm")["transport"]
        variable = []
        for size in args.sizes.split(","):
            height, width = SIZES[size]
            frame = plate(height, width)
            prior = np.ones((height // 8, width // 8), np.float32)  # fully opaque: nothing to refine
            path = os.path.join(runtime, f"plate_{size}.exr")
            out = oiio.ImageOutput.create(path)
            out.open(path, oiio.ImageSpec(width, height, 3, oiio.HALF))
            out.write_image(frame)
            out.close()
            runs = {
                "inline, ipc": transport_runs(clients["ipc"], frame, prior, args.repeats),
                "inline, tcp": transport_runs(clients["tcp"], frame, prior, args.repeats),
                "shared memory": transport_runs(clients["ipc"], frame, prior, args.repeats, transport="shm"),
                "shared memory, full-resolution prior": transport_runs(
                    clients["ipc"], frame, np.ones((height, width), np.float32), args.repeats, transport="shm"),
                "file path (EXR half)": transport_runs(clients["ipc"], frame, prior, args.repeats, path=path,
                                                       colourspace="srgb"),
            }
            for name, run in runs.items():
                lines.append(f"| {size} | {name} | {run['transport']:.1f} | {run['copy']:.1f} | {run['ratio']:.2f} "
                             f"| {run['total']:.0f} |")
            shared = runs["shared memory"]
            variable.append(f"{size} {(shared['transport'] - fixed) / shared['copy']:.2f}")
            in_process = in_process_ms(args.checkpoint, size, args.repeats)
            engine_total = runs["shared memory"]["total"]
            overhead.append(f"| {size} | {in_process:.0f} | {engine_total:.0f} | {engine_total / in_process:.2f} |")
    finally:
        for client in clients.values():
            client.close()
        for address in addresses.values():
            stop_engine(address, runtime)
    text = (f"### Transports (medians of {args.repeats} requests, one run; transport / copy is the median of "
            f"each request's ratio to a copy timed just before it)\n\n" + "\n".join(lines) +
            f"\n\nAn empty request (no pixels, through the engine's worker and back): {empty:.2f} ms. "
            f"A 64 x 64 frame through shared memory (a matte request's fixed cost): {fixed:.2f} ms. "
            f"Shared memory less that fixed cost, in frame copies: {', '.join(variable)}.\n" +
            "\n\n### Engine overhead per frame (shared memory, same frame)\n\n" + "\n".join(overhead) + "\n")
    print(text)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
