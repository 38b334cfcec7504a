"""How much moving a frame to the engine and its alpha back costs, per transport.

    python benchmarks/bench_transport.py --checkpoint CKPT [--sizes 1080p,4k] [--repeats 5] [--out FILE]

For each size and transport (inline over ipc, inline over tcp, shared memory, file
path), a real engine process mattes the same frame repeatedly. The transport cost
of a request is the client's wall time minus the engine's own compute time (its
reported total less its decode time), so it counts sending the pixels, decoding
them into the engine's input, and the alpha's way back. It is set against a plain
memory copy of the frame measured in the same run. The prior is given as fully
opaque, so no pixel is refined and the compute part stays small and steady.

Engine overhead: the same frames through the engine against the in-process
``Matter`` (model loaded here), as a ratio of wall times.
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


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def copy_ms(frame: np.ndarray, repeats: int) -> float:
    target = np.empty_like(frame)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, frame)
        samples.append(time.perf_counter() - start)
    return median_ms(samples)


def start_engine(address: str, checkpoint: str, runtime: str) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": runtime}
    subprocess.run(["sparsemat", "engine", "start", "--address", address, "--checkpoint", checkpoint,
                    "--device", "cpu"], check=True, env=env, stdout=subprocess.DEVNULL)


def stop_engine(address: str, runtime: str) -> None:
    subprocess.run(["sparsemat", "engine", "stop", "--address", address], env={**os.environ, "XDG_RUNTIME_DIR": runtime},
                   stdout=subprocess.DEVNULL)


def transport_ms(client, frame: np.ndarray, prior: np.ndarray, repeats: int, **how) -> tuple[float, float]:
    """(median transport ms, median round trip ms) of matte requests."""
    transport, total = [], []
    client.matte("bench", 0, frame if "path" not in how else None, prior=prior, temporal=False, **how)  # warm-up
    for index in range(repeats):
        start = time.perf_counter()
        _, stats = client.matte("bench", index * 2 + 2, frame if "path" not in how else None, prior=prior,
                                temporal=False, **how)
        wall = time.perf_counter() - start
        compute = (stats["ms"]["total"] - stats["ms"]["read"]) / 1000.0
        transport.append(wall - compute)
        total.append(wall)
    return median_ms(transport), median_ms(total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--sizes", default="1080p,4k")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="append the Markdown tables to this file")
    args = parser.parse_args()

    import torch

    from sparsemat.engine.matting import Matter
    from sparsemat.engine.model import SparseMat
    from sparsemat.plugin.client import EngineClient

    import OpenImageIO as oiio

    runtime = tempfile.mkdtemp(prefix="sparsemat-bench-")
    os.chmod(runtime, 0o700)
    addresses = {"ipc": f"ipc://{runtime}/bench.sock", "tcp": "tcp://127.0.0.1:47311"}
    for address in addresses.values():
        start_engine(address, args.checkpoint, runtime)
    model = SparseMat.from_checkpoint(args.checkpoint)
    local = Matter(model)
    lines = ["| size | transport | transport ms | frame copy ms | transport / copy | round trip ms |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    overhead = ["| size | in-process ms | engine (shm) ms | engine / in-process |", "| --- | ---: | ---: | ---: |"]
    try:
        clients = {name: EngineClient(address, timeout=60) for name, address in addresses.items()}
        for size in args.sizes.split(","):
            height, width = SIZES[size]
            frame = plate(height, width)
            prior = np.ones((height // 8, width // 8), np.float32)  # fully opaque: nothing to refine
            copy = copy_ms(frame, max(args.repeats, 5))
            path = os.path.join(runtime, f"plate_{size}.exr")
            out = oiio.ImageOutput.create(path)
            out.open(path, oiio.ImageSpec(width, height, 3, oiio.HALF))
            out.write_image(frame)
            out.close()
            runs = {
                "inline, ipc": transport_ms(clients["ipc"], frame, prior, args.repeats),
                "inline, tcp": transport_ms(clients["tcp"], frame, prior, args.repeats),
                "shared memory": transport_ms(clients["ipc"], frame, prior, args.repeats, transport="shm"),
                "file path (EXR half)": transport_ms(clients["ipc"], frame, prior, args.repeats, path=path,
                                                     colourspace="srgb"),
            }
            for name, (moved, total) in runs.items():
                lines.append(f"| {size} | {name} | {moved:.1f} | {copy:.1f} | {moved / copy:.1f} | {total:.0f} |")
            samples = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                local.matte(torch.from_numpy(frame), prior=torch.from_numpy(prior))
                samples.append(time.perf_counter() - start)
            in_process = median_ms(samples)
            engine_total = runs["shared memory"][1]
            overhead.append(f"| {size} | {in_process:.0f} | {engine_total:.0f} | {engine_total / in_process:.2f} |")
    finally:
        for address in addresses.values():
            stop_engine(address, runtime)
    text = ("### Transports (median of {} requests, one run)\n\n".format(args.repeats) + "\n".join(lines) +
            "\n\n### Engine overhead per frame (shared memory, same frame)\n\n" + "\n".join(overhead) + "\n")
    print(text)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
