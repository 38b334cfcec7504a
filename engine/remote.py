"""``sparsemat matte --engine``: a matte job's frames through a running engine (no torch here)."""
from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from sparsemat.plugin.client import EngineClient, EngineError, EngineUnavailable, listening, nobody_listens

from .job import JobError, MatteJob, runner
from .validation import EXIT_FAILED, EXIT_UNAVAILABLE, FrameError, UsageError


class EngineMatter:
    """The job's one stream on the engine; pixels by shared memory when the engine is local. The
    engine's warnings about the stream (evicted, its state dropped) go to ``warn`` as they come."""

    def __init__(self, client: EngineClient, stream: str, max_pixels: int | None = None,
                 warn: Callable[[str], None] = lambda text: None):
        self.client = client
        self.stream = stream
        self.max_pixels = max_pixels
        self.warn = warn
        self.transport = "shm" if client.address.startswith("ipc://") else "inline"

    def __call__(self, frame_rgb: np.ndarray, frame: int | None, new_stream: bool, prior: np.ndarray | None = None,
                 trimap: np.ndarray | None = None, trimap_dilation: int = 0, clean_plate: np.ndarray | None = None,
                 plate_colours: np.ndarray | None = None):
        try:
            alpha, stats = self.client.matte(self.stream, 0 if frame is None else frame, frame_rgb,
                                             transport=self.transport, colourspace="srgb", prior=prior,
                                             trimap=trimap, trimap_dilation=trimap_dilation, clean_plate=clean_plate,
                                             foreground=plate_colours is not None, foreground_colours=plate_colours,
                                             temporal=not new_stream, max_pixels=self.max_pixels)
        except EngineError as exc:
            if exc.code != "bad_pixels":  # the engine's FrameError: the frame fails alone, as in process
                raise
            raise FrameError(str(exc)) from exc
        for text in stats.get("warnings", ()):
            self.warn(f"frame {frame}: the engine says: {text}")
        # An engine of protocol 1.0 does not say whether it continued the stream: assume it did.
        return np.asarray(alpha, dtype=np.float32), SimpleNamespace(**{"continued": True, **stats})


def run_remote(job: MatteJob, address: str, max_pixels: int | None, progress: bool, on_frame=None) -> int:
    """The job through the engine at ``address``, whose model options apply; the job's stream is
    released on the engine however the job ends. Returns the exit code: EXIT_UNAVAILABLE when
    the engine could not be reached (worth retrying), EXIT_FAILED for frames that failed."""
    if not listening(address):  # said at once: a job would otherwise wait out the client's timeout
        print(f"sparsemat: error: no SparseMat engine at {address}: {nobody_listens(address)}; start one "
              f"(sparsemat engine start --address {address})", file=sys.stderr)
        return EXIT_UNAVAILABLE
    client = EngineClient(address)
    stream = f"cli-{uuid.uuid4().hex[:12]}"
    reachable = True
    try:
        guided = (job.prior, job.trimap, job.clean_plate)
        if client.hello().get("needs_prior") and all(guide is None for guide in guided) and not job.keyframe_alphas:
            raise UsageError(f"the engine at {address} runs the guided refiner (no checkpoint): give --prior PATTERN "
                             f"(a coarse alpha per frame), --trimap PATTERN or --clean-plate PATH, or use an engine "
                             f"with a checkpoint")
        from tqdm import tqdm

        matter = EngineMatter(client, stream, max_pixels, warn=lambda text: tqdm.write(text, file=sys.stderr))
        summary = runner(job)(job, matter, progress=progress, on_frame=on_frame)
    except (JobError, EngineError) as exc:
        reachable = not isinstance(exc, EngineUnavailable)
        if getattr(exc, "code", None) == "busy":  # it is shutting down: as good as gone, and retryable
            print(f"sparsemat: error: the engine at {address} was stopped: {exc.message}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return EXIT_FAILED if reachable else EXIT_UNAVAILABLE
    finally:
        if reachable:  # free the stream's state however the job ended (idle eviction would, later)
            with contextlib.suppress(EngineError):
                client.reset(stream)
        client.close()
    print(summary.describe())
    return 0 if summary.ok else EXIT_FAILED
