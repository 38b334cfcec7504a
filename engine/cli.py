"""The ``sparsemat`` command.

    sparsemat matte INPUT OUTPUT [options]

Heavy modules (torch, OpenImageIO) are imported inside the subcommands so that
``sparsemat --help`` answers at once and errors in arguments come back fast.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

EXIT_FAILED = 1  # the job ran but some frames failed, or it had to stop
EXIT_USAGE = 2  # nothing was done: bad arguments, no frames, no checkpoint


class UsageError(Exception):
    """Nothing could start; the message says what is needed."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer, 0 or more, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds, 0 or more, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number over 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsemat", description="Full-resolution alpha mattes with SparseMat.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    matte = commands.add_parser(
        "matte", help="matte an image or a frame sequence",
        description="Matte an image or a frame sequence (patterns: clip/f.%04d.exr or clip/f.####.exr).")
    matte.add_argument("input", help="image file or sequence pattern")
    matte.add_argument("output", help="output file or pattern (.exr float/half, .png/.tif 16-bit); frame numbers are kept")
    matte.add_argument("--frames", help="frame range such as 1001-1100, 1-10x2 or 1,3,5-7 (default: the frames on disk)")
    matte.add_argument("--checkpoint", default=os.environ.get("SPARSEMAT_CHECKPOINT"),
                       help="SparseMat checkpoint (default: $SPARSEMAT_CHECKPOINT)")
    matte.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    matte.add_argument("--temporal", action=argparse.BooleanOptionalAction, default=None,
                       help="reuse the previous frame's alpha where nothing changed (default: on for sequences)")
    matte.add_argument("--keyframe-interval", type=_non_negative_int, default=0, metavar="N",
                       help="frames that are multiples of N start the temporal stream, and a run that starts "
                            "elsewhere first re-mattes (without writing) the frames since the last one, so results "
                            "do not depend on how a range is split into farm chunks (default 0: off)")
    matte.add_argument("--max-pixels", type=_positive_int, default=None,
                       help="most pixels refined at full resolution before the cascade takes over (default 4000000)")
    matte.add_argument("--half-precision", action="store_true", help="run the network in float16 (CUDA only)")
    matte.add_argument("--half", action="store_true", help="write EXR alpha as half instead of float")
    matte.add_argument("--skip-existing", action="store_true", help="leave frames whose output exists (farm re-runs)")
    matte.add_argument("--input-colorspace", dest="colourspace", metavar="NAME",
                       help="srgb, linear, or an OpenColorIO colourspace (default: linear for EXR, srgb otherwise)")
    matte.add_argument("--prior", metavar="PATTERN",
                       help="coarse alpha per frame (any resolution) used instead of the network's prior alpha")
    matte.add_argument("--backend", default="torch", choices=("torch", "spconv"), help="sparse convolution backend")
    matte.add_argument("--engine", metavar="ADDRESS",
                       help="send frames to a running engine (ipc://... or tcp://...) instead of loading the model here")
    matte.add_argument("--quiet", action="store_true", help="no progress bar")
    matte.set_defaults(run=run_matte)

    engine = commands.add_parser("engine", help="the engine daemon: start, stop, status, serve",
                                 description="Manage the persistent engine process that hosts connect to.")
    actions = engine.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("start", "start a detached engine; returns once it answers"),
                       ("serve", "run the engine in the foreground (systemd, containers)"),
                       ("stop", "finish in-flight requests and stop the engine"),
                       ("status", "print the engine's address, pid, uptime, device, streams, memory, frames")):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--address", default=None,
                            help="ipc://PATH or tcp://HOST:PORT (default: a socket in the user's runtime folder; "
                                 "tcp://:PORT binds to loopback)")
        if name in ("start", "serve"):
            action.add_argument("--checkpoint", default=os.environ.get("SPARSEMAT_CHECKPOINT"),
                                help="SparseMat checkpoint (default: $SPARSEMAT_CHECKPOINT); without one the engine "
                                     "runs the weight-free guided refiner, and every request must carry a prior")
            action.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
            action.add_argument("--memory-budget", type=_positive, default=4.0, metavar="GB",
                                help="memory for the temporal state of all streams together (default 4); least "
                                     "recently used streams are evicted")
            action.add_argument("--stream-idle-timeout", type=_positive, default=900.0, metavar="SECONDS",
                                help="evict a stream's temporal state after this long unused (default 900)")
            action.add_argument("--half-precision", action="store_true", help="run the network in float16 (CUDA only)")
            action.add_argument("--exit-when-idle", type=_seconds, default=0.0, metavar="SECONDS",
                                help="stop after this long without a matte or reset request (default 0: never); "
                                     "for engines whose owner may die without stopping them, like farm sessions")
        action.set_defaults(run=run_engine_command)

    preview = commands.add_parser(
        "preview", help="write a PNG contact sheet of one frame: plate, alpha, composite, refined masks",
        description="Write a PNG contact sheet of one frame: the plate, the alpha, the plate over a checkerboard, "
                    "and the plate with the refined band (red) and, from a previous frame, the changed pixels (blue).")
    preview.add_argument("input", help="image file or sequence pattern")
    preview.add_argument("output", help="the PNG to write")
    preview.add_argument("--frame", type=_non_negative_int, help="frame of a sequence (default: the first on disk)")
    preview.add_argument("--checkpoint", default=os.environ.get("SPARSEMAT_CHECKPOINT"),
                         help="SparseMat checkpoint (default: $SPARSEMAT_CHECKPOINT)")
    preview.add_argument("--prior", metavar="PATTERN", help="coarse alpha per frame, as for matte")
    preview.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    preview.add_argument("--input-colorspace", dest="colourspace", metavar="NAME")
    preview.add_argument("--width", type=_positive_int, default=480, help="width of each of the four tiles")
    preview.set_defaults(run=run_preview)

    from .evaluate import add_eval_command

    add_eval_command(commands)
    return parser


def run_engine_command(args) -> int:
    from . import daemon

    try:
        address = daemon.normalize_address(args.address)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.action in ("start", "serve"):
        from .config import EngineConfig

        checkpoint = os.path.abspath(args.checkpoint) if args.checkpoint else None
        config = EngineConfig(address, checkpoint, args.device, args.memory_budget, args.stream_idle_timeout,
                              args.exit_when_idle, args.half_precision)
        return daemon.start(config) if args.action == "start" else daemon.serve(config)
    if args.action == "stop":
        return daemon.stop(address)
    return daemon.status(address)


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA device")
    return name


def _plates(args):
    """INPUT and --prior as patterns, after the checks matte and preview share: --prior is a
    sequence exactly when INPUT is, and --input-colorspace names a colourspace that can be
    decoded (checked here, not once per frame after the model has loaded)."""
    from .imageio import check_colourspace
    from .sequence import SequenceError, check_same_kind, parse_pattern

    try:
        source = parse_pattern(args.input)
        prior = parse_pattern(args.prior) if args.prior else None
        if prior is not None:
            check_same_kind(source, "INPUT", prior, "--prior")
    except SequenceError as exc:
        raise UsageError(str(exc)) from exc
    if args.colourspace is not None:
        try:
            check_colourspace(args.colourspace)
        except ValueError as exc:
            raise UsageError(f"--input-colorspace: {exc}") from exc
    return source, prior


def _refuse_overwriting(writes, reads) -> None:
    """UsageError when a file to write is a file to read, however either is spelled (%04d or ####,
    relative or absolute, through symbolic or hard links): a run would replace the plates it mattes."""
    inputs = {key: path for path in reads for key in _file_keys(path)}
    for path in writes:
        for key in _file_keys(path):
            if key in inputs:
                raise UsageError(f"OUTPUT would overwrite the input file {inputs[key]}: write the output elsewhere")


def _file_keys(path: str) -> list:
    """The resolved path, and the (device, inode) of an existing file: one file under two names (a
    hard link, another case on a case-insensitive file system) has one identity."""
    try:
        info = os.stat(path)
    except OSError:
        return [os.path.realpath(path)]
    return [os.path.realpath(path), (info.st_dev, info.st_ino)]


def _plan_job(args):
    from .imageio import SUPPORTED_OUTPUTS
    from .job import MatteJob
    from .sequence import SequenceError, check_same_kind, parse_pattern, select_frames

    source, prior = _plates(args)
    try:
        target = parse_pattern(args.output)
        check_same_kind(source, "INPUT", target, "OUTPUT")
        if os.path.splitext(args.output)[1].lower() not in SUPPORTED_OUTPUTS:
            raise UsageError(f"OUTPUT must end in one of {', '.join(SUPPORTED_OUTPUTS)}: {args.output}")
        frames = select_frames(source, args.frames)
    except SequenceError as exc:
        raise UsageError(str(exc)) from exc
    if not source.is_sequence and not os.path.exists(args.input):
        raise UsageError(f"input not found: {args.input}")
    _refuse_overwriting((target.path(frame) for frame in frames),
                        [plates.path(frame) for plates in (source, prior) if plates is not None for frame in frames])
    temporal = source.is_sequence if args.temporal is None else args.temporal
    return MatteJob(source, target, frames, temporal=temporal, skip_existing=args.skip_existing,
                    colourspace=args.colourspace, half=args.half, prior=prior,
                    keyframe_interval=args.keyframe_interval)


def load_matter(checkpoint: str | None, device: str = "auto", max_pixels: int | None = None,
                backend: str = "torch", half: bool = False):
    """The model from ``checkpoint`` ready on ``device``, or the weight-free guided refiner when
    there is no checkpoint; UsageError says what is wrong."""
    from .matting import MAX_PIXELS, Matter
    from .model import CheckpointError, SparseMat

    device = _resolve_device(device)
    if half and device != "cuda":
        raise UsageError("--half-precision needs a CUDA device")
    try:
        model = SparseMat.from_checkpoint(checkpoint) if checkpoint else None
        return Matter(model, device=device, max_pixels=max_pixels or MAX_PIXELS, backend=backend, half=half)
    except (CheckpointError, ValueError, ImportError) as exc:
        raise UsageError(str(exc)) from exc


NEEDS_A_SOURCE = ("nothing to matte with: give --checkpoint PATH (or set SPARSEMAT_CHECKPOINT) to use the "
                  "SparseMat network, or --prior PATTERN (a coarse alpha per frame, any resolution) to refine "
                  "it with the weight-free guided refiner")


def run_matte(args) -> int:
    from .allocator import keep_freed_memory
    from .job import InProcessMatter, JobError, run_job

    job = _plan_job(args)
    if args.engine:
        return _run_matte_remote(args, job)
    if not args.checkpoint and not args.prior:
        raise UsageError(NEEDS_A_SOURCE)
    keep_freed_memory()  # before torch starts its threads
    matter = load_matter(args.checkpoint, args.device, args.max_pixels, args.backend, args.half_precision)
    try:
        summary = run_job(job, InProcessMatter(matter), progress=not args.quiet)
    except JobError as exc:
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(summary.describe())
    return 0 if summary.ok else EXIT_FAILED


def _run_matte_remote(args, job) -> int:
    """The job's frames through a running engine; the engine's model options apply."""
    import uuid

    from sparsemat.plugin.client import EngineClient, EngineError, EngineUnavailable

    from .daemon import normalize_address
    from .job import EngineMatter, JobError, run_job

    try:
        address = normalize_address(args.engine)
    except ValueError as exc:
        raise UsageError(f"--engine: {exc}") from exc
    client = EngineClient(address)
    stream = f"cli-{uuid.uuid4().hex[:12]}"
    reachable = True
    try:
        client.hello()
        summary = run_job(job, EngineMatter(client, stream, args.max_pixels), progress=not args.quiet)
    except (JobError, EngineError) as exc:
        reachable = not isinstance(exc, EngineUnavailable)
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if reachable:  # free the stream's state however the job ended (idle eviction would, later)
            with contextlib.suppress(EngineError):
                client.reset(stream)
        client.close()
    print(summary.describe())
    return 0 if summary.ok else EXIT_FAILED


def run_preview(args) -> int:
    """Matte the frame (after its predecessor, when there is one, for the temporal mask) and draw it."""
    import torch

    from .imageio import ImageReadError, read_alpha, read_rgb, write_rgb8
    from .matting import FrameError
    from .preview import contact_sheet
    from .sequence import SequenceError, select_frames

    if not args.checkpoint and not args.prior:
        raise UsageError(NEEDS_A_SOURCE)
    source, prior = _plates(args)
    if args.frame is not None and not source.is_sequence:
        raise UsageError(f"--frame needs a sequence pattern, not the single file '{source.text}'")
    try:
        frame = args.frame if args.frame is not None else select_frames(source, None)[0]
    except SequenceError as exc:
        raise UsageError(str(exc)) from exc
    # Frame 0 and a single image have no previous frame; a missing one is a sequence's first.
    previous = frame - 1 if frame is not None and frame > 0 and os.path.exists(source.path(frame - 1)) else None
    reads = [frame] if previous is None else [previous, frame]
    _refuse_overwriting([args.output],
                        [plates.path(number) for plates in (source, prior) if plates is not None for number in reads])
    matter = load_matter(args.checkpoint, args.device)

    def matte(number, state=None):
        pixels = torch.from_numpy(read_rgb(source.path(number), args.colourspace))
        coarse = None if prior is None else torch.from_numpy(read_alpha(prior.path(number)))
        return (pixels, *matter.matte(pixels, state, prior=coarse))

    state = None
    if previous is not None:
        try:
            state = matte(previous)[2]
        except (ImageReadError, OSError, FrameError) as exc:  # it only adds the changed pixels: do without
            print(f"sparsemat: note: no changed pixels (blue) from frame {previous}: {exc}", file=sys.stderr)
    try:
        pixels, alpha, _, stats = matte(frame, state)
    except (ImageReadError, OSError, FrameError) as exc:
        raise UsageError(str(exc)) from exc
    changed = None if stats.masks.changed is None else stats.masks.changed[0, 0].cpu().numpy() > 0
    sheet = contact_sheet(pixels.numpy(), alpha.cpu().numpy(), stats.masks.refine[0, 0].cpu().numpy() > 0, changed,
                          tile_width=args.width)
    try:
        write_rgb8(args.output, sheet)
    except OSError as exc:
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {args.output}: plate | alpha | composite | refined band (red), changed (blue); "
          f"active {stats.active_fraction:.2%}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sparsemat: interrupted; frames already written are complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
