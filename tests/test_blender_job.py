"""The Blender add-on's job (sparsemat_blender/job.py, no bpy) against a real engine: the order of
work, what a failed frame stops, what cancelling leaves, and that no rendered plate is stranded.
The render callback writes real EXR plates, as Blender's File Output node does."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from conftest import REPO

sys.path.insert(0, str(REPO / "host_integrations" / "blender"))

from sparsemat_blender.job import MatteJob  # noqa: E402

from sparsemat.plugin import exr, host  # noqa: E402


def plate_renderer(reference, folder: Path, broken: set[int] = frozenset(), failing: set[int] = frozenset()):
    """render(frame) as the add-on's is: a plate EXR in ``folder``; ``broken`` frames are written
    truncated (the engine cannot read them), ``failing`` frames raise as a failed Blender render."""
    clip = reference["frames"].astype(np.float32) / 255
    rendered = []

    def render(frame: int) -> str:
        if frame in failing:
            raise RuntimeError(f"Blender rendered no plate for frame {frame}")
        path = folder / f"plate-{frame}.exr"
        exr.write(str(path), np.ascontiguousarray(clip[frame % len(clip), :64, :96]) ** 2.2, ("R", "G", "B"),
                  half=False, compression=exr.NONE)
        if frame in broken:
            path.write_bytes(path.read_bytes()[:200])
        rendered.append(frame)
        return str(path)

    render.rendered = rendered
    return render


def new_job(engine, reference, tmp_path, frames, **faults):
    settings = host.Settings(address=engine, keyframe_interval=2)
    (tmp_path / "plates").mkdir(exist_ok=True)
    render = plate_renderer(reference, tmp_path / "plates", **faults)
    tracker = host.StreamTracker()
    job = MatteJob(settings, f"job-{tmp_path.name}", frames, render,
                   alpha_path=lambda frame: str(tmp_path / f"alpha.{frame:04d}.exr"), tracker=tracker)
    return job, render, tracker, settings


def alphas(tmp_path) -> list[int]:
    return sorted(int(path.name.split(".")[1]) for path in tmp_path.glob("alpha.*.exr"))


def test_frames_are_matted_in_order_with_one_plate_rendered_ahead(engine, reference, tmp_path):
    job, render, tracker, settings = new_job(engine, reference, tmp_path, [1, 2, 3, 4])
    job.run()
    assert job.failure is None and not job.cancelled
    assert job.matted == [1, 2, 3, 4] and render.rendered == [1, 2, 3, 4]
    assert alphas(tmp_path) == [1, 2, 3, 4]
    assert job.status.startswith("frame 4: ")
    assert tracker.last(job.stream, settings) == 4
    assert not list((tmp_path / "plates").iterdir()), "every plate is removed once matted"


def test_a_frame_the_engine_cannot_read_stops_the_job_there(engine, reference, tmp_path):
    job, render, tracker, settings = new_job(engine, reference, tmp_path, [1, 2, 3, 4, 5], broken={3})
    job.run()
    assert job.failure is not None and job.failure.frame == 3
    assert job.failure.message.startswith("SparseMat engine: ") and "\n" not in job.failure.message
    assert job.matted == [1, 2] and alphas(tmp_path) == [1, 2]
    assert render.rendered[-1] <= 4, "at most one plate is rendered past the failed frame"
    assert tracker.last(job.stream, settings) is None, "the stream starts afresh next time"
    assert not list((tmp_path / "plates").iterdir()), "the failed and the rendered-ahead plates are removed"


def test_a_failed_render_is_reported_for_its_frame(engine, reference, tmp_path):
    job, render, _, _ = new_job(engine, reference, tmp_path, [1, 2, 3], failing={2})
    job.run()
    assert job.failure.frame == 2 and "rendered no plate for frame 2" in job.failure.message
    assert job.matted == [1]


def test_cancelling_stops_before_the_next_frame_and_strands_nothing(engine, reference, tmp_path):
    job, render, tracker, settings = new_job(engine, reference, tmp_path, list(range(1, 9)))
    while not job.matted:
        job.step(wait=0.1)
    job.cancel()
    while job.step(wait=0.1):
        pass
    assert job.cancelled and job.failure is None
    assert 1 <= len(job.matted) <= 3 and render.rendered == job.frames[: len(render.rendered)]
    assert len(render.rendered) <= len(job.matted) + 2
    assert alphas(tmp_path) == job.matted
    assert not list((tmp_path / "plates").iterdir())
