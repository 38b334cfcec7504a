"""The farm template (host_integrations/farm/sparsemat_matte.yaml) through the real `openjd run`.

A 7-frame clip is matted in chunks of 2 and of 5, each chunk a task sent through the
session's engine daemon, and both must give exactly the files of one in-process run of
the whole range with the same keyframe interval; no engine may outlive its session. The
same holds without a checkpoint (the weight-free guided refiner, a prior per frame).
"""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, write_rgb
from sparsemat.engine.imageio import read_alpha, write_alpha

TEMPLATE = REPO / "host_integrations" / "farm" / "sparsemat_matte.yaml"
FRAMES = range(1, 8)
KEYFRAMES = 3  # keyframes 3 and 6: chunks start on them (3-4), after them (5-6, 7-7, 5-7) and before (1-2, 1-4)
# Chunks that openjd forms from "1-7" (CONTIGUOUS, balanced), and the frames each re-mattes first.
CHUNKS = {2: {"1-2": 0, "3-4": 0, "5-6": 2, "7-7": 1}, 5: {"1-4": 0, "5-7": 2}}


def _env(runtime) -> dict:
    # The tasks call `sparsemat` and `bash` from PATH: make sure it is this interpreter's.
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def _sparsemat(*args) -> list[str]:
    return [sys.executable, "-m", "sparsemat.engine.cli", *map(str, args)]


@pytest.fixture(scope="module")
def clip(reference, tmp_path_factory):
    """Frames 1-7: a 96 x 96 crop of the reference clip (its 3 frames in turn), 8-bit PNG.
    At this size the previous frame's state changes the alpha (at 48 x 64 it does not), so
    a chunk that started cold would show."""
    folder = tmp_path_factory.mktemp("plate")
    for frame in FRAMES:
        write_rgb(folder / f"p.{frame:04d}.png", np.ascontiguousarray(reference["frames"][(frame - 1) % 3, 80:176, 140:236]))
    return folder / "p.%04d.png"


@pytest.fixture(scope="module")
def prior_clip(tmp_path_factory):
    """Frames 1-7 of the sample clip at 96 x 64 and its coarse priors (12 x 8): (plate, prior) patterns.
    At this size a cold start changes the guided refiner's alpha too."""
    spec = importlib.util.spec_from_file_location("make_sample_clip", REPO / "examples" / "make_sample_clip.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    folder = tmp_path_factory.mktemp("prior_plate")
    plates, _, priors = generator.make_clip(len(FRAMES), (96, 64))
    for frame, plate, prior in zip(FRAMES, plates, priors):
        write_rgb(folder / f"p.{frame:04d}.png", np.round(plate * 255.0).astype(np.uint8))
        write_alpha(str(folder / f"prior.{frame:04d}.exr"), prior)
    return folder / "p.%04d.png", folder / "prior.%04d.exr"


@pytest.fixture()
def runtime(tmp_path):
    """A private XDG_RUNTIME_DIR. Should a run be cut short before its onExit, the engines it
    started (their environment names this folder) are stopped afterwards, so a failure leaves
    nothing behind."""
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    yield folder
    for pid in engine_processes(""):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                ours = f"XDG_RUNTIME_DIR={folder}".encode() in handle.read().split(b"\0")
        except OSError:
            continue
        if ours:
            os.kill(pid, signal.SIGTERM)


def engine_processes(needle: str) -> list[int]:
    """Live `sparsemat.engine.cli engine serve` processes whose command line contains ``needle``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "sparsemat.engine.cli engine serve" in command and needle in command:
            found.append(int(entry))
    return found


def test_template_passes_openjd_check():
    result = subprocess.run([sys.executable, "-m", "openjd", "check", str(TEMPLATE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passes validation checks" in result.stdout


def _farm_run(clip, output, size, *params) -> list[str]:
    return [sys.executable, "-m", "openjd", "run", str(TEMPLATE), "--step", "Matte", "-p", "ShotName=test",
            "-p", f"InputFolder={clip.parent}", "-p", f"InputFile={clip.name}",
            "-p", f"OutputFolder={output.parent}", "-p", f"OutputFile={output.name}",
            "-p", f"Frames={FRAMES[0]}-{FRAMES[-1]}", "-p", f"ChunkSize={size}", "-p", f"KeyframeInterval={KEYFRAMES}",
            "-p", "Gpus=0", *(arg for param in params for arg in ("-p", param))]


def _in_process_runs(clip, tmp_path, *model) -> dict:
    """The references, with the model options ``model``: "whole", the range in one process with
    no engine; "cold", frame 5 alone without keyframes (what a chunk starting at 5 would give
    without its pre-roll)."""
    return {"whole": _sparsemat("matte", clip, tmp_path / "whole" / "a.%04d.exr", *model, "--device", "cpu",
                                "--keyframe-interval", KEYFRAMES, "--quiet"),
            "cold": _sparsemat("matte", clip, tmp_path / "cold" / "a.%04d.exr", *model, "--device", "cpu",
                               "--frames", "5", "--quiet")}


def _run_all(runs: dict, env: dict, envs: dict | None = None) -> dict:
    """Runs the commands at once (they are independent, and the farm runs are mostly waiting on
    their engine); their output by name, after asserting that each succeeded."""
    processes = {name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=(envs or {}).get(name, env))
                 for name, command in runs.items()}
    logs = {}
    try:
        for name, process in processes.items():
            logs[name] = process.communicate(timeout=400)[0]
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    for name, process in processes.items():
        assert process.returncode == 0, f"{name} failed:\n{logs[name][-4000:]}"
    return logs


def _check_chunked_runs(logs: dict, tmp_path, runtime) -> None:
    """Each chunked farm run: one session, one engine, the expected chunks and pre-rolls, and
    files equal to the whole run's; no engine or runtime file left behind."""
    whole = {frame: read_alpha(str(tmp_path / "whole" / f"a.{frame:04d}.exr")) for frame in FRAMES}
    for size, chunks in CHUNKS.items():
        log = logs[f"chunk{size}"]
        # One session: the environment (the engine) is entered and left once around all the chunks.
        assert "Session ended successfully" in log and f"Chunks run: {len(chunks)}" in log, log[-3000:]
        assert log.count("Entering Environment: SparseMatEngine") == 1 and log.count("engine started at ") == 1
        assert log.count("Exiting Environment: SparseMatEngine") == 1 and re.search(r"engine at \S+ stopped", log)
        assert re.findall(r"Frame\(CHUNK\[INT\]\) = (\S+)", log) == list(chunks), log[-3000:]
        for chunk, prerolled in chunks.items():
            first, last = map(int, chunk.split("-"))
            summary = f"{last - first + 1} frame(s) written, 0 skipped, 0 failed"
            assert (summary + (f", {prerolled} pre-rolled" if prerolled else " in ")) in log, (chunk, log[-3000:])
        # Progress the farm sees as it happens: one openjd_progress and one openjd_status line a frame
        # (pre-rolled ones too), ending at 100 % for each chunk.
        assert log.count("openjd_status: frame ") == len(FRAMES) + sum(chunks.values())
        assert log.count("openjd_progress: 100.0") == len(chunks), log[-3000:]
        assert re.search(r"openjd_status: frame 5 written \(\d/\d\)", log)

        out = tmp_path / f"chunk{size}"
        assert sorted(os.listdir(out)) == sorted(f"a.{frame:04d}.exr" for frame in FRAMES)
        for frame in FRAMES:
            alpha = read_alpha(str(out / f"a.{frame:04d}.exr"))
            assert alpha.shape == whole[frame].shape and np.array_equal(alpha, whole[frame]), f"chunk size {size}, frame {frame}"

        # The engine died with its session: no `engine serve` process on the session's socket.
        # The default address is a socket in the session's working directory.
        address = re.search(r"openjd_env: SPARSEMAT_ENGINE_ADDRESS=(\S+)", log).group(1)
        assert re.fullmatch(r"ipc://.+/sparsemat-engine\.sock", address) and f"through the engine at {address}" in log
        assert engine_processes(address) == []
    # Nothing left in the runtime folder either: the lock goes with the session's socket, the log
    # (shown in the session log) with the session's working directory.
    assert not (runtime / "sparsemat").exists() or list((runtime / "sparsemat").iterdir()) == []

    # Without the pre-roll, frame 5 would differ: the equality above is not a coincidence of the clip.
    assert not np.array_equal(read_alpha(str(tmp_path / "cold" / "a.0005.exr")), whole[5])


def test_chunked_farm_runs_equal_one_whole_run(clip, seed1_checkpoint, runtime, tmp_path):
    runs = _in_process_runs(clip, tmp_path, "--checkpoint", seed1_checkpoint)
    for size in CHUNKS:
        # PriorFolder keeps its empty default: the tasks must pass no --prior (a folder would fail them).
        runs[f"chunk{size}"] = _farm_run(clip, tmp_path / f"chunk{size}" / "a.%04d.exr", size,
                                         f"Checkpoint={seed1_checkpoint}")
    _check_chunked_runs(_run_all(runs, _env(runtime)), tmp_path, runtime)


def test_weight_free_chunked_farm_runs_equal_one_whole_run(prior_clip, runtime, tmp_path):
    """No Checkpoint, a PriorFolder: the engine runs the guided refiner, each task sends the priors."""
    clip, prior = prior_clip
    local = {**_env(runtime), "SPARSEMAT_CHECKPOINT": ""}
    runs = _in_process_runs(clip, tmp_path, "--prior", prior)
    for size in CHUNKS:
        runs[f"chunk{size}"] = _farm_run(clip, tmp_path / f"chunk{size}" / "a.%04d.exr", size,
                                         f"PriorFolder={prior.parent}", f"PriorFile={prior.name}")
    # A worker's SPARSEMAT_CHECKPOINT must not reach the engine: the job's empty Checkpoint chooses
    # the guided refiner (this one does not exist, so an engine that read it would fail to start).
    farm = {**_env(runtime), "SPARSEMAT_CHECKPOINT": str(tmp_path / "absent.pth")}
    logs = _run_all(runs, farm, envs={"whole": local, "cold": local})
    for size in CHUNKS:
        # onExit's `engine status`: the empty Checkpoint reached the script as "", so no --checkpoint.
        assert re.search(r"model\s+guided refiner \(no checkpoint\)", logs[f"chunk{size}"]), logs[f"chunk{size}"][-3000:]
    _check_chunked_runs(logs, tmp_path, runtime)


def test_no_checkpoint_and_no_prior_fails_before_any_engine_starts(prior_clip, runtime, tmp_path):
    clip, _ = prior_clip
    result = subprocess.run(_farm_run(clip, tmp_path / "out" / "a.%04d.exr", 5), capture_output=True, text=True,
                            env=_env(runtime), timeout=120)
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-3000:]
    assert "nothing to matte with: set Checkpoint (the SparseMat network), or PriorFolder" in log, log[-3000:]
    assert "TrimapFolder (a trimap per frame), CleanPlateFolder or KeyframeAlphaFolder for the weight-free" in log
    assert "Chunks run: 0" in log and "engine started at " not in log and not (tmp_path / "out").exists()


def test_one_clean_plate_reaches_every_task_without_a_checkpoint(clip, reference, runtime, tmp_path):
    """A CleanPlateFolder with one file and no Checkpoint: the guided refiner, whose chunked farm
    run gives the files of one in-process run with the same plate, foregrounds included."""
    write_rgb(tmp_path / "clean.png", np.ascontiguousarray(reference["frames"][1, 80:176, 140:236]))
    local = {**_env(runtime), "SPARSEMAT_CHECKPOINT": ""}
    whole, farm = (("--foreground", tmp_path / "whole" / "f.%04d.exr"),
                   (f"ForegroundFolder={tmp_path / 'farm'}", "ForegroundFile=f.%04d.exr"))
    runs = {"whole": _in_process_runs(clip, tmp_path, "--clean-plate", tmp_path / "clean.png", *whole)["whole"],
            "farm": _farm_run(clip, tmp_path / "farm" / "a.%04d.exr", 5, f"CleanPlateFolder={tmp_path}",
                              "CleanPlateFile=clean.png", *farm)}
    logs = _run_all(runs, local)
    assert re.search(r"model\s+guided refiner \(no checkpoint\)", logs["farm"]), logs["farm"][-3000:]
    from sparsemat.plugin import exr

    for frame in FRAMES:
        farm, whole = (read_alpha(str(tmp_path / name / f"a.{frame:04d}.exr")) for name in ("farm", "whole"))
        assert np.array_equal(farm, whole), frame
        farm, whole = (exr.read(str(tmp_path / name / f"f.{frame:04d}.exr"))[0] for name in ("farm", "whole"))
        assert np.array_equal(farm, whole), frame


def test_keyframe_mattes_reach_every_task(clip, reference, runtime, tmp_path):
    """A KeyframeAlphaFolder (mattes of frames 1 and 7) and no Checkpoint: chunks of 2, most of them
    between the keyframes, give the files of one in-process run."""
    for key in (1, 7):
        frame = np.ascontiguousarray(reference["frames"][(key - 1) % 3, 80:176, 140:236]).astype(np.float32) / 255
        write_alpha(str(tmp_path / f"key.{key:04d}.exr"), (frame.mean(axis=-1) > 0.5).astype(np.float32))
    local = {**_env(runtime), "SPARSEMAT_CHECKPOINT": ""}
    runs = {"whole": _in_process_runs(clip, tmp_path, "--keyframe-alpha", tmp_path / "key.%04d.exr")["whole"],
            "farm": _farm_run(clip, tmp_path / "farm" / "a.%04d.exr", 2, f"KeyframeAlphaFolder={tmp_path}",
                              "KeyframeAlphaFile=key.%04d.exr")}
    logs = _run_all(runs, local)
    assert "Chunks run: 4" in logs["farm"], logs["farm"][-3000:]
    for frame in FRAMES:
        farm, whole = (read_alpha(str(tmp_path / name / f"a.{frame:04d}.exr")) for name in ("farm", "whole"))
        assert np.array_equal(farm, whole), frame


def test_trimaps_reach_every_task(clip, seed1_checkpoint, runtime, tmp_path):
    """A TrimapFolder (8-bit, half the plate's size) and a dilation: the chunked farm run gives the
    files of one in-process run with the same trimaps, whose known pixels are exact."""
    y, x = np.mgrid[:48, :48]
    distance = np.hypot(y - 24, x - 24) - 14
    for frame in FRAMES:
        ring = np.abs(distance - (frame - 4) / 2) <= 2
        trimap = np.where(ring, 128, np.where(distance < 0, 255, 0)).astype(np.uint8)
        write_rgb(tmp_path / f"t.{frame:04d}.png", trimap[..., None])
    trimap = tmp_path / "t.%04d.png"
    options = ("--trimap", trimap, "--trimap-dilation", "1")
    runs = {"whole": _in_process_runs(clip, tmp_path, "--checkpoint", seed1_checkpoint, *options)["whole"],
            "farm": _farm_run(clip, tmp_path / "farm" / "a.%04d.exr", 5, f"Checkpoint={seed1_checkpoint}",
                              f"TrimapFolder={tmp_path}", "TrimapFile=t.%04d.png", "TrimapDilation=1")}
    log = _run_all(runs, _env(runtime))["farm"]
    assert "Session ended successfully" in log, log[-3000:]
    for frame in FRAMES:
        alpha = read_alpha(str(tmp_path / "farm" / f"a.{frame:04d}.exr"))
        assert np.array_equal(alpha, read_alpha(str(tmp_path / "whole" / f"a.{frame:04d}.exr"))), frame
        known = np.kron(read_alpha(str(tmp_path / f"t.{frame:04d}.png")), np.ones((2, 2)))
        unknown = np.lib.stride_tricks.sliding_window_view(np.pad((known > 0) & (known < 1), 1), (3, 3)).any(axis=(2, 3))
        assert np.all(alpha[(known == 1) & ~unknown] == 1) and np.all(alpha[(known == 0) & ~unknown] == 0), frame


# A studio path of 200 characters, as deep project trees give.
LONG = "/mnt/projects/" + "/".join(["feature_film_2027_final_delivery_reel_07"] * 4) + "/sq0420/sh0420_0110/comp/plates"


def _summary(*params) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openjd", "summary", str(TEMPLATE),
                           *(arg for param in params for arg in ("-p", param))], capture_output=True, text=True)


def test_the_template_takes_long_studio_paths_and_keeps_its_name_short():
    """Deadline Cloud refuses a job name over 128 characters; the name never holds a path."""
    assert len(LONG) >= 200
    params = ("ShotName=sh0420_0110", f"InputFolder={LONG}", "InputFile=sh0420_0110_plate_v012.%04d.exr",
              f"OutputFolder={LONG}/../mattes", "Frames=1001-1100", "ChunkSize=150",
              f"Checkpoint={LONG}/SparseMat.pth")
    result = _summary(*params)
    assert result.returncode == 0, result.stdout + result.stderr
    name = re.search(r"--- Summary for '(.*)' ---", result.stdout).group(1)
    assert name == "SparseMat sh0420_0110" and len(name) <= 128


def test_chunks_over_deadline_clouds_150_frames_are_refused():
    result = _summary("InputFolder=/p", "InputFile=p.%04d.exr", "OutputFolder=/o", "Frames=1-300", "ChunkSize=151")
    assert result.returncode != 0 and "ChunkSize" in result.stdout + result.stderr


def test_gpu_jobs_ask_for_a_gpu_worker_and_cpu_jobs_do_not():
    """hostRequirements follow Gpus (FEATURE_BUNDLE_1 lets the amount be a parameter)."""
    import yaml

    template = yaml.safe_load(TEMPLATE.read_text())
    requirement = template["steps"][0]["hostRequirements"]["amounts"][0]
    assert requirement == {"name": "amount.worker.gpu", "min": "{{Param.Gpus}}"}
    gpus = next(p for p in template["parameterDefinitions"] if p["name"] == "Gpus")
    assert (gpus["minValue"], gpus["maxValue"]) == (0, 1)
    run = template["steps"][0]["script"]["actions"]["onRun"]
    assert run["cancelation"]["mode"] == "NOTIFY_THEN_TERMINATE" and run["timeout"] > 0
    outputs = [p["name"] for p in template["parameterDefinitions"] if p.get("dataFlow") == "OUT"]
    assert sorted(outputs) == ["ForegroundFolder", "OutputFolder"]
