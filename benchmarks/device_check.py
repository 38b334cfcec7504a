#!/usr/bin/env python
"""The device check: is SparseMat right on this device, and how fast is it? One run, one table.

    python benchmarks/device_check.py --device cuda --out device_check.md          # a GPU, about 3-4 min
    python benchmarks/device_check.py --device cpu --sizes 96x160 --quick          # the CI smoke run

Checks (each a row with ok / FAILED / skipped and its figures; exit status 1 when one failed):

- fidelity: the fixture's published references (frame alone, the three-frame temporal clip, the
  cascade) matted on the device, within the fixture's tolerance (mean |diff| <= 1e-4 and 99.9%
  of pixels within 1e-3), and against the CPU's mattes of the same frames;
- ``--float16-network`` against float32 on the device (CUDA only): the figures, measured;
- the spconv backend against the torch backend (when spconv is importable);
- the weight-free guided refiner on the device against the CPU;

then times, on the synthetic plate of ``bench_engine.py`` at each size: one frame alone (host to
host: a numpy frame in, a numpy alpha out), the same frame again with its state (a static shot),
and the temporal pair (a small region moved); peak device memory per size; and the round trip of
one 1080p frame through a real engine process over each transport (inline, shm, file); and one
fine-tuning step at the first size (its loss against the CPU's, its time and memory).

It needs only torch and numpy (plus pyzmq, OpenImageIO and opencolorio for the engine round
trips, which are skipped without them). Run it from the source tree: without an installed
``sparsemat`` it links ``engine/`` and ``plugin/`` into a temporary package folder. The
fixtures come from ``--fixtures`` (default $SPARSEMAT_FIXTURES, else ../shared/fixtures/official).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SIZES = {"1080p": (1080, 1920), "4k": (2160, 3840), "8k": (4320, 7680)}


def use_source_tree() -> None:
    """Make ``sparsemat.engine`` and ``sparsemat.plugin`` importable from this checkout when they are
    not installed (here and in the engine processes this script starts)."""
    if importlib.util.find_spec("sparsemat") is not None:
        return
    folder = tempfile.mkdtemp(prefix="sparsemat-source-")
    os.mkdir(os.path.join(folder, "sparsemat"))
    for name in ("engine", "plugin"):
        os.symlink(os.path.join(REPO, name), os.path.join(folder, "sparsemat", name))
    sys.path.insert(0, folder)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))


def size_of(text: str) -> tuple[str, tuple[int, int]]:
    if text in SIZES:
        return text, SIZES[text]
    width, height = (int(part) for part in text.lower().split("x"))
    return text, (height, width)


# ---- the report ----------------------------------------------------------------------------------------

class Report:
    def __init__(self):
        self.checks: list[tuple[str, str, str]] = []  # (name, ok | FAILED | skipped, figures)
        self.timings: list[dict] = []
        self.notes: list[str] = []

    def check(self, name: str, ok: bool | None, figures: str) -> None:
        self.checks.append((name, "skipped" if ok is None else "ok" if ok else "FAILED", figures))
        print(f"{self.checks[-1][1]:>8}  {name}: {figures}", flush=True)

    @property
    def failed(self) -> bool:
        return any(status == "FAILED" for _, status, _ in self.checks)

    def markdown(self, header: str) -> str:
        lines = [header, "", "| check | result | figures |", "|---|---|---|"]
        lines += [f"| {name} | {status} | {figures} |" for name, status, figures in self.checks]
        if self.timings:
            lines += ["", "| plate | measurement | median ms | frames/s | active | peak device memory |",
                      "|---|---|---:|---:|---:|---:|"]
            lines += [f"| {t['plate']} | {t['what']} | {t['ms']:,.1f} | {1000 / t['ms']:.2f} | {t['active']} | "
                      f"{t['memory']} |" for t in self.timings]
        lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def compare(ours, theirs) -> tuple[bool, str]:
    """The fixture README's tolerance, and the figures."""
    import numpy as np

    diff = np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64))
    within = float((diff <= 1e-3).mean())
    return (diff.mean() <= 1e-4 and within >= 0.999,
            f"mean {diff.mean():.1e}, max {diff.max():.1e}, within 1e-3 {within:.3%}")


# ---- correctness -------------------------------------------------------------------------------------

def fixture_mattes(matter, reference) -> dict:
    """The three published cases through ``matter``, on the references' exact float32 input."""
    import numpy as np
    import torch

    frames = [torch.from_numpy(frame * np.float32(1 / 255)) for frame in reference["frames"]]
    out = {"image": matter.matte(frames[0])[0].cpu().numpy()}
    state = None
    for index, frame in enumerate(frames):
        alpha, state, _ = matter.matte(frame, state)
        out[f"video {index}"] = alpha.cpu().numpy()
    budget = int(reference["cascade_max_n_pixel"])
    out["cascade"] = matter.matte(frames[0], max_pixels=budget)[0].cpu().numpy()
    return out


def check_fidelity(report: Report, load, device: str, reference) -> None:
    import torch

    from sparsemat.engine.matting import Matter

    expected = {"image": reference["ref_image"], "cascade": reference["ref_cascade"],
                **{f"video {i}": reference["ref_video"][i] for i in range(len(reference["ref_video"]))}}
    ours = fixture_mattes(Matter(load(), device), reference)
    for name, alpha in ours.items():
        report.check(f"{device}: {name} vs the published code", *compare(alpha, expected[name]))
    if device != "cpu":
        threads = torch.get_num_threads()
        cpu = fixture_mattes(Matter(load(), "cpu"), reference)
        torch.set_num_threads(threads)
        for name, alpha in ours.items():
            report.check(f"{device} vs cpu: {name}", *compare(alpha, cpu[name]))


def check_half(report: Report, load, device: str, reference) -> None:
    import numpy as np
    import torch

    from sparsemat.engine.matting import Matter

    if device == "cpu":
        report.check("float16 network vs float32", None, "needs CUDA")
        return
    frame = torch.from_numpy(reference["frames"][0] * np.float32(1 / 255))
    full = Matter(load(), device).matte(frame)[0].cpu().numpy()
    half = Matter(load(), device, half=True).matte(frame)[0].cpu().numpy()
    diff = np.abs(full.astype(np.float64) - half)
    # no tolerance is claimed before it is measured: the row records it; only NaN fails
    report.check("float16 network vs float32 (measured)", bool(np.isfinite(half).all()),
                 f"mean {diff.mean():.1e}, max {diff.max():.1e}, within 1e-2 {(diff <= 1e-2).mean():.3%}")


def check_backends(report: Report, load, device: str, reference) -> None:
    import numpy as np
    import torch

    from sparsemat.engine.matting import Matter
    from sparsemat.engine.model.backends import spconv_available

    if not spconv_available():
        report.check("spconv backend vs torch backend", None, "spconv is not installed")
        return
    frame = torch.from_numpy(reference["frames"][0] * np.float32(1 / 255))
    model = load()
    theirs = Matter(model, device, backend="spconv").matte(frame)[0].cpu().numpy()
    ours = Matter(model, device).matte(frame)[0].cpu().numpy()
    report.check(f"{device}: spconv backend vs torch backend", *compare(theirs, ours))


def check_guided(report: Report, device: str, reference) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from sparsemat.engine.matting import Matter

    frame = torch.from_numpy(reference["frames"][0] * np.float32(1 / 255))
    prior = F.interpolate(torch.from_numpy(reference["ref_image"])[None, None], scale_factor=0.25, mode="area")[0, 0]
    cpu = Matter(None, "cpu").matte(frame, prior=prior)[0].numpy()
    if device == "cpu":
        report.check("guided refiner", bool(np.isfinite(cpu).all()) and 0 < cpu.mean() < 1,
                     f"mean alpha {cpu.mean():.3f}")
        return
    ours = Matter(None, device).matte(frame, prior=prior)[0].cpu().numpy()
    report.check(f"{device} vs cpu: guided refiner", *compare(ours, cpu))


# ---- speed ---------------------------------------------------------------------------------------------

def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device: str, call, repeats: int) -> tuple[float, object]:
    """Median wall milliseconds of ``call()`` after one warm-up, and its last result."""
    result = call()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        result = call()
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times), result


def time_sizes(report: Report, load, device: str, sizes, repeats: int) -> None:
    import torch

    sys.path.insert(0, HERE)
    from bench_engine import PRIOR_BLUR, make_plate, make_prior, shifted_region

    from sparsemat.engine.matting import Matter

    matter = Matter(load(), device)
    for label, (height, width) in sizes:
        plate, truth, head = make_plate(height, width)
        prior = make_prior(truth, blur=PRIOR_BLUR)
        frame, coarse = plate.numpy(), prior.numpy()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

        def host_to_host(state=None, pixels=frame):
            alpha, new_state, stats = matter.matte(torch.from_numpy(pixels), state, prior=torch.from_numpy(coarse))
            return alpha.cpu().numpy(), new_state, stats

        ms, (_, state, stats) = _timed(device, host_to_host, repeats)
        rows = [("one frame, host to host", ms, stats)]
        ms, (_, _, stats) = _timed(device, lambda: host_to_host(state), repeats)
        rows.append(("static shot (same frame, with its state)", ms, stats))
        second, _ = shifted_region(plate, head, max(1, round(3 * height / 1080)))
        moved = second.numpy()
        ms, (_, _, stats) = _timed(device, lambda: host_to_host(state, moved), repeats)
        rows.append(("temporal pair (a region moved)", ms, stats))
        memory = (f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.startswith("cuda") else "-")
        for what, ms, stats in rows:
            mode = "temporal" if stats.mode == "full" and stats.reused else stats.mode
            report.timings.append({"plate": label, "what": what, "ms": ms, "memory": memory,
                                   "active": f"{stats.active_fraction:.2%} ({mode})"})
            print(f"   {label}: {what}: {ms:,.1f} ms, active {stats.active_fraction:.2%}", flush=True)


def time_training(report: Report, load, device: str, repeats: int, size: tuple[str, tuple[int, int]]) -> None:
    """One fine-tuning step (two 512-px crops of the synthetic plate's band, forward and backward),
    its loss on the device against the CPU's, and its time."""
    import torch

    sys.path.insert(0, HERE)
    from bench_engine import PRIOR_BLUR, make_plate, make_prior

    from sparsemat.engine.training import crop, freeze_prior, patch_loss, refiner_optimiser, train_step, whole_frame

    label, (height, width) = size
    plate, truth, _ = make_plate(height, width)
    prior = make_prior(truth, blur=PRIOR_BLUR)
    side = min(512, height, width)
    losses, model, patches = {}, None, []
    for where in dict.fromkeys(("cpu", device)):  # the CPU first, then the device (once when it is the CPU)
        model = load()
        freeze_prior(model)
        model.to(where)
        frame = whole_frame(model, plate.to(where), truth.to(where), prior.to(where))
        ys, xs = torch.nonzero(frame.band.cpu() > 0, as_tuple=True)
        top = int(min(max(ys.median() - side // 2, 0), height - side))
        left = int(min(max(xs.median() - side // 2, 0), width - side))
        patches = [crop(frame, top, left, side), crop(frame, top, left, side, flip=True)]
        losses[where] = patch_loss(model, patches[0]).item()
    if device != "cpu":
        difference = abs(losses[device] - losses["cpu"]) / abs(losses["cpu"])
        report.check("training loss vs the CPU", difference <= 1e-3,
                     f"{losses[device]:.6f} against {losses['cpu']:.6f} (relative {difference:.1e})")
    optimiser = refiner_optimiser(model, 1e-4, (0.9, 0.999))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    ms, _ = _timed(device, lambda: train_step(model, optimiser, patches), repeats)
    sites = int(sum(torch.count_nonzero(patch.band) for patch in patches))
    memory = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.startswith("cuda") else "-"
    report.timings.append({"plate": label, "what": f"fine-tune step (2 crops of {side} px, forward and backward)",
                           "ms": ms, "memory": memory, "active": f"{sites:,} band pixels"})
    print(f"   {label}: fine-tune step: {ms:,.1f} ms, {sites:,} band pixels", flush=True)


def time_engine(report: Report, checkpoint: str, device: str, repeats: int, size: tuple[str, tuple[int, int]]) -> None:
    """Round trips of one frame through a real engine process, over each transport."""
    try:
        import OpenImageIO  # noqa: F401  (the engine reads and writes files with it)
        import zmq  # noqa: F401
    except ImportError as exc:
        report.check("engine round trips", None, f"{exc.name} is not installed")
        return
    import numpy as np

    sys.path.insert(0, HERE)
    from bench_engine import PRIOR_BLUR, make_plate, make_prior

    from sparsemat.plugin import exr
    from sparsemat.plugin.client import EngineClient

    label, (height, width) = size
    folder = tempfile.mkdtemp(prefix="sparsemat-check-")
    os.chmod(folder, 0o700)
    address = f"ipc://{folder}/engine.sock"
    command = [sys.executable, "-m", "sparsemat.engine.cli", "engine", "start", "--address", address,
               "--checkpoint", checkpoint, "--device", device, "--exit-when-idle", "120"]
    started = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "XDG_RUNTIME_DIR": folder})
    if started.returncode != 0:
        report.check("engine round trips", False, f"the engine did not start: {started.stderr.strip()[-300:]}")
        return
    plate, truth, _ = make_plate(height, width)
    frame = np.ascontiguousarray(plate.numpy())
    prior = make_prior(truth, blur=PRIOR_BLUR).numpy()
    path = os.path.join(folder, "plate.exr")
    exr.write(path, frame, ("R", "G", "B"), half=False, compression=exr.NONE)  # read back as srgb: the same pixels
    client = EngineClient(address, timeout=120)
    try:
        for transport in ("inline", "shm", "file"):
            if transport == "file":
                def call():
                    return client.matte("check-file", 1, path=path, prior=prior, colourspace="srgb", temporal=False)
            else:
                def call(transport=transport):
                    return client.matte(f"check-{transport}", 1, frame, transport=transport, prior=prior,
                                        temporal=False)
            ms, (_, stats) = _timed("cpu", call, repeats)
            engine_ms = stats["ms"].get("total", 0.0)
            report.timings.append({"plate": label, "what": f"engine round trip, {transport}", "ms": ms, "memory": "-",
                                   "active": f"{stats['active_fraction']:.2%} ({stats['mode']})"})
            report.notes.append(f"engine round trip over {transport} at {label}: {ms:,.1f} ms, of which the engine's "
                                f"own frame time {engine_ms:,.1f} ms")
            print(f"   {label}: engine round trip over {transport}: {ms:,.1f} ms", flush=True)
        report.check("engine round trips", True, "inline, shm and file answered")
    finally:
        client.close()
        subprocess.run([sys.executable, "-m", "sparsemat.engine.cli", "engine", "stop", "--address", address],
                       capture_output=True, env={**os.environ, "XDG_RUNTIME_DIR": folder})


# ---- main ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument("--sizes", default="1080p,4k,8k", help="1080p, 4k, 8k or WxH, comma-separated")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    parser.add_argument("--quick", action="store_true", help="one repeat, engine round trips at the first size")
    parser.add_argument("--fixtures", default=os.environ.get("SPARSEMAT_FIXTURES") or
                        os.path.join(REPO, "..", "shared", "fixtures", "official"))
    parser.add_argument("--out", help="write the table (Markdown) here too")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    sizes = [size_of(text.strip()) for text in args.sizes.split(",") if text.strip()]

    use_source_tree()
    import numpy as np
    import torch

    from sparsemat.engine.model import SparseMat

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("device_check: error: torch sees no CUDA device here (use --device cpu)", file=sys.stderr)
        return 2
    reference = dict(np.load(os.path.join(args.fixtures, "seed1_256x384.npz")))
    checkpoint = os.path.join(tempfile.mkdtemp(prefix="sparsemat-ckpt-"), "seed1.pth")
    subprocess.run([sys.executable, os.path.join(args.fixtures, "make_ckpt.py"), "1", checkpoint], check=True,
                   capture_output=True)

    def load():  # a model per Matter: a Matter moves the model it is given onto its device
        return SparseMat.from_checkpoint(checkpoint)

    name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
    header = (f"Device check on {name} ({args.device}), torch {torch.__version__}, "
              f"{torch.get_num_threads()} CPU threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(header, flush=True)
    report = Report()
    started = time.perf_counter()
    check_fidelity(report, load, args.device, reference)
    check_half(report, load, args.device, reference)
    check_backends(report, load, args.device, reference)
    check_guided(report, args.device, reference)
    time_sizes(report, load, args.device, sizes, repeats)
    time_training(report, load, args.device, repeats, sizes[0])
    time_engine(report, checkpoint, args.device, repeats, sizes[0])
    report.notes.append(f"the whole check took {time.perf_counter() - started:.0f} s")
    text = report.markdown(header)
    print(text)
    if args.out:
        with open(args.out, "w") as file:
            file.write(text)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
