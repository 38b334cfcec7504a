"""The ``sparsemat`` command.

    sparsemat matte INPUT OUTPUT [options]

Heavy modules (torch, OpenImageIO) are imported inside the subcommands so that
``sparsemat --help`` answers at once and errors in arguments come back fast.
"""
from __future__ import annotations

import argparse
import os
import sys

from .validation import EXIT_FAILED, EXIT_USAGE, UsageError, checkpoint_file, device_name


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


def _trimap_dilation(text: str) -> int:
    from .validation import MAX_TRIMAP_DILATION

    value = int(text)
    if not 0 <= value <= MAX_TRIMAP_DILATION:
        raise argparse.ArgumentTypeError(f"expected 0 to {MAX_TRIMAP_DILATION} pixels, got {text}")
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


def _crop(text: str):
    from .preview import crop_box

    return crop_box(text)


def _device(text: str) -> str:
    try:
        return device_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


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
    matte.add_argument("--device", default="auto", type=_device, metavar="DEVICE",
                       help="auto (the first GPU torch sees, else the CPU), cpu, cuda or cuda:N (default auto)")
    matte.add_argument("--temporal", action=argparse.BooleanOptionalAction, default=None,
                       help="reuse the previous frame's alpha where nothing changed (default: on for sequences)")
    matte.add_argument("--keyframe-interval", type=_non_negative_int, default=0, metavar="N",
                       help="frames that are multiples of N start the temporal stream, and a run that starts "
                            "elsewhere first re-mattes (without writing) the frames since the last one, so results "
                            "do not depend on how a range is split into farm chunks (default 0: off)")
    matte.add_argument("--max-pixels", type=_positive_int, default=None,
                       help="most pixels refined at full resolution before the cascade takes over (default 4000000)")
    matte.add_argument("--float16-network", "--half-precision", dest="half_precision", action="store_true",
                       help="run the network in float16 (CUDA only; the mattes are float either way)")
    matte.add_argument("--half-float-output", "--half", dest="half", action="store_true",
                       help="write EXR mattes as half floats instead of floats (the network is unchanged)")
    matte.add_argument("--skip-existing", action="store_true", help="leave frames whose output exists (farm re-runs)")
    matte.add_argument("--input-colorspace", dest="colourspace", metavar="NAME",
                       help="srgb, linear, or an OpenColorIO colourspace (default: linear for EXR, srgb otherwise)")
    matte.add_argument("--prior", metavar="PATTERN",
                       help="coarse alpha per frame (any resolution: a roto, a keyer's matte) used instead of the "
                            "network's prior alpha; without --checkpoint, the weight-free guided refiner refines it")
    _add_guide_arguments(matte)
    matte.add_argument("--keyframe-alpha", action="append", metavar="N=PATH|PATTERN",
                       help="an artist's matte for frame N (repeat for each keyframe), or a pattern whose files are "
                            "the keyframes: written as they are, and carried to the frames between by the plate's "
                            "motion (from the keyframes either side, blended by distance and confidence), each "
                            "frame refined with the carried matte as its prior")
    matte.add_argument("--foreground", metavar="OUTPUT_PATTERN",
                       help="also write each frame's foreground, unmixed from the background where the matte is "
                            "partial, as premultiplied RGBA EXR (alpha in A) in the plate's colours (sRGB files "
                            "decoded to linear): ready to merge over a new background")
    matte.add_argument("--backend", default="torch", choices=("torch", "spconv"), help="sparse convolution backend")
    matte.add_argument("--engine", metavar="ADDRESS",
                       help="send frames to a running engine (ipc://... or tcp://...) instead of loading the model here")
    matte.add_argument("--quiet", action="store_true", help="no progress bar")
    matte.add_argument("--openjd-progress", action="store_true",
                       help="print openjd_progress and openjd_status lines for each frame (for farms that run Open "
                            "Job Description templates: Deadline Cloud, openjd run)")
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
                                     "runs the weight-free guided refiner, and every request must carry a prior, a "
                                     "trimap or a clean plate")
            action.add_argument("--device", default="auto", type=_device, metavar="DEVICE",
                                help="auto, cpu, cuda or cuda:N, as for matte (default auto)")
            action.add_argument("--memory-budget", type=_positive, default=4.0, metavar="GB",
                                help="memory for the temporal state of all streams together (default 4); least "
                                     "recently used streams are evicted")
            action.add_argument("--stream-idle-timeout", type=_positive, default=900.0, metavar="SECONDS",
                                help="evict a stream's temporal state after this long unused (default 900)")
            action.add_argument("--float16-network", "--half-precision", dest="half_precision", action="store_true",
                                help="run the network in float16 (CUDA only)")
            action.add_argument("--exit-when-idle", type=_seconds, default=0.0, metavar="SECONDS",
                                help="stop after this long without a matte or reset request (default 0: never); "
                                     "for engines whose owner may die without stopping them, like farm sessions")
            action.add_argument("--allow-files-under", action="append", default=[], metavar="FOLDER",
                                help="read files sent by path only under this folder (repeatable; default: any "
                                     "regular file the engine's user can read)")
            action.add_argument("--allow-remote", action="store_true",
                                help="allow a tcp address other machines can reach (tcp://*:PORT, an interface's "
                                     "address): the protocol has no authentication, so anyone who can connect can "
                                     "use the engine")
        if name == "start":
            action.add_argument("--replace", action="store_true",
                                help="stop an engine already running at the address with another model or device, "
                                     "and start this one")
            action.add_argument("--log", metavar="FILE",
                                help="append the engine's log to FILE (default: a file per address in the runtime "
                                     "folder)")
        if name == "status":
            action.add_argument("--json", action="store_true", help="print the status as one JSON object")
        action.set_defaults(run=run_engine_command)

    preview = commands.add_parser(
        "preview", help="write a PNG contact sheet of one frame: plate, alpha, composite, refined masks",
        description="Write a PNG contact sheet of one frame: the plate, the alpha, the plate over a checkerboard, "
                    "and the plate with the refined pixels (red) and, from a previous frame, the changed pixels "
                    "(blue), each tile labelled, with a legend.")
    preview.add_argument("input", help="image file or sequence pattern")
    preview.add_argument("output", help="the PNG to write")
    preview.add_argument("--frame", type=_non_negative_int, help="frame of a sequence (default: the first on disk)")
    preview.add_argument("--checkpoint", default=os.environ.get("SPARSEMAT_CHECKPOINT"),
                         help="SparseMat checkpoint (default: $SPARSEMAT_CHECKPOINT)")
    preview.add_argument("--prior", metavar="PATTERN", help="coarse alpha per frame, as for matte")
    _add_guide_arguments(preview)
    preview.add_argument("--device", default="auto", type=_device, metavar="DEVICE", help="as for matte")
    preview.add_argument("--input-colorspace", dest="colourspace", metavar="NAME")
    preview.add_argument("--width", type=_positive_int, default=960, help="width of each of the four tiles (default 960)")
    preview.add_argument("--crop", type=_crop, metavar="X,Y,W,H",
                         help="show this region of the frame (pixels, from the top left), magnified when it is "
                              "smaller than a tile, to judge hair at full resolution")
    preview.set_defaults(run=_run_preview)

    from .benchmark import add_benchmark_command
    from .evaluate import add_eval_command
    from .train_command import add_train_commands

    add_eval_command(commands)
    add_benchmark_command(commands, _device)
    add_train_commands(commands, _positive_int, _non_negative_int, _positive, _device)
    return parser


def run_engine_command(args) -> int:
    from . import daemon

    try:
        address = daemon.normalize_address(args.address, allow_remote=getattr(args, "allow_remote", True))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.action in ("start", "serve"):
        from .config import EngineConfig

        checkpoint = checkpoint_file(args.checkpoint)
        config = EngineConfig(address, checkpoint, args.device, args.memory_budget, args.stream_idle_timeout,
                              args.exit_when_idle, args.half_precision, args.allow_remote,
                              tuple(os.path.realpath(folder) for folder in args.allow_files_under))
        if address.startswith("tcp://") and args.allow_remote:
            print(f"sparsemat: warning: {address} may accept connections from other machines, with no "
                  f"authentication: anyone who reaches it can use the engine", file=sys.stderr)
        if args.action == "serve":
            return daemon.serve(config)
        return daemon.start(config, replace=args.replace, logfile=os.path.abspath(args.log) if args.log else None)
    if args.action == "stop":
        return daemon.stop(address)
    return daemon.status(address, as_json=args.json)


def _add_guide_arguments(command) -> None:
    from .validation import MAX_TRIMAP_DILATION

    command.add_argument("--trimap", metavar="PATTERN",
                         help="trimap per frame (0 background, 1 foreground, anything between unknown; 8/16-bit or "
                              "float, any resolution of the frame's aspect): its known pixels are exact in the "
                              "matte and only its unknown region is refined; with --prior, the prior feeds the "
                              "refiner and the trimap bounds it")
    command.add_argument("--trimap-dilation", type=_trimap_dilation, default=0, metavar="PIXELS",
                         help=f"grow the trimap's unknown region by this many pixels on each side, at the frame's "
                              f"resolution (default 0, at most {MAX_TRIMAP_DILATION})")
    command.add_argument("--clean-plate", metavar="PATH_OR_PATTERN",
                         help="the shot without the subject, the frame's size: one picture for a locked-off shot, "
                              "or a sequence; the prior comes from each frame's colour distance to it (in place of "
                              "the network's prior; not with --prior), read in the plates' colourspace")


def _plan_job(args):
    from .imageio import SUPPORTED_OUTPUTS
    from .inputs import check_clean_plate_size, check_guides, keyframe_alphas, plates, refuse_overwriting
    from .job import MatteJob
    from .sequence import SequenceError, check_same_kind, parse_pattern, select_frames

    source, prior, trimap, clean_plate = plates(args)
    try:
        target = parse_pattern(args.output)
        check_same_kind(source, "INPUT", target, "OUTPUT")
        if os.path.splitext(args.output)[1].lower() not in SUPPORTED_OUTPUTS:
            raise UsageError(f"OUTPUT must end in one of {', '.join(SUPPORTED_OUTPUTS)}: {args.output}")
        foreground = parse_pattern(args.foreground) if args.foreground else None
        if foreground is not None:
            check_same_kind(source, "INPUT", foreground, "--foreground")
            if os.path.splitext(args.foreground)[1].lower() != ".exr":
                raise UsageError(f"--foreground must end in .exr (premultiplied RGBA): {args.foreground}")
        frames = select_frames(source, args.frames)
    except SequenceError as exc:
        raise UsageError(str(exc)) from exc
    if not source.is_sequence and not os.path.exists(args.input):
        raise UsageError(f"input not found: {args.input}")
    check_guides(frames, prior=prior, trimap=trimap, clean_plate=clean_plate)
    keys = keyframe_alphas(args.keyframe_alpha, source) if args.keyframe_alpha else {}
    if keys:
        if not source.is_sequence:
            raise UsageError("--keyframe-alpha needs a sequence INPUT")
        for given, flag in ((prior, "--prior"), (clean_plate, "--clean-plate"), (foreground, "--foreground")):
            if given:
                raise UsageError(f"--keyframe-alpha and {flag} cannot be combined: the keyframes' mattes, carried "
                                 f"by the motion, are each frame's prior")
    check_clean_plate_size(clean_plate, source, frames)
    reads = [patterns.path(frame) for patterns in (source, prior, trimap, clean_plate) if patterns is not None
             for frame in frames]
    refuse_overwriting((target.path(frame) for frame in frames), reads)
    if foreground is not None:
        refuse_overwriting((foreground.path(frame) for frame in frames), reads, "--foreground")
    if foreground is not None and any(os.path.realpath(foreground.path(frame)) == os.path.realpath(target.path(frame))
                                      for frame in frames):
        raise UsageError("--foreground and OUTPUT name the same files: write them apart")
    temporal = source.is_sequence if args.temporal is None else args.temporal
    return MatteJob(source, target, frames, temporal=temporal, skip_existing=args.skip_existing,
                    colourspace=args.colourspace, half=args.half, prior=prior, trimap=trimap,
                    trimap_dilation=args.trimap_dilation, clean_plate=clean_plate, foreground=foreground,
                    keyframe_alphas=keys, keyframe_interval=args.keyframe_interval)


def run_matte(args) -> int:
    from .allocator import keep_freed_memory
    from .inputs import NEEDS_A_SOURCE

    job = _plan_job(args)
    if args.engine:
        from .daemon import normalize_address
        from .remote import run_remote

        try:
            address = normalize_address(args.engine, allow_remote=True)  # a client may reach another machine
        except ValueError as exc:
            raise UsageError(f"--engine: {exc}") from exc
        return run_remote(job, address, args.max_pixels, progress=not args.quiet, on_frame=_on_frame(args))
    if not (args.checkpoint or args.prior or args.trimap or args.clean_plate or args.keyframe_alpha):
        raise UsageError(NEEDS_A_SOURCE)
    keep_freed_memory()  # before torch is imported and starts its threads
    from .job import JobError, runner
    from .loading import ModelLoadError, load_matter
    from .matting import InProcessMatter

    try:
        matter = load_matter(args.checkpoint, args.device, args.max_pixels, args.backend, args.half_precision)
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from exc
    if args.backend == "spconv" and matter.device.type == "cpu" and matter.model is not None:
        print("sparsemat: note: on CPU the torch backend is faster than spconv, which runs on one thread there "
              "(docs/PERFORMANCE.md); --backend spconv is meant for CUDA", file=sys.stderr)
    try:
        summary = runner(job)(job, InProcessMatter(matter), progress=not args.quiet, on_frame=_on_frame(args))
    except JobError as exc:
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(summary.describe())
    return 0 if summary.ok else EXIT_FAILED


def _on_frame(args):
    if not args.openjd_progress:
        return None
    from .job import openjd_progress

    return openjd_progress


def _run_preview(args) -> int:
    from .preview import run_preview

    return run_preview(args)


# What a host-only install (numpy, pyzmq, msgpack) lacks for the commands that read images or
# run the model, and how to get it.
ENGINE_PACKAGES = {"OpenImageIO": "pip install 'sparsemat[engine]'", "PyOpenColorIO": "pip install 'sparsemat[engine]'",
                   "tqdm": "pip install 'sparsemat[engine]'",
                   "torch": "pip install torch (the CUDA build you use, or torch==2.13.0 for the CPU one), then "
                            "pip install 'sparsemat[engine]'"}


def main(argv: list[str] | None = None) -> int:
    from sparsemat.plugin.runtime import RuntimeFolderError

    # OpenMP threads that spin at every barrier take the machine's other cores from the host, and
    # on a busy workstation a frame waits for a thread descheduled mid-spin (docs/PERFORMANCE.md,
    # "OpenMP wait policy"). Set before torch loads its runtime; a user's own setting stands.
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except (UsageError, RuntimeFolderError) as exc:
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USAGE)
    except ImportError as exc:
        if exc.name not in ENGINE_PACKAGES:
            raise
        print(f"sparsemat: error: 'sparsemat {args.command}' needs {exc.name}, which is not installed here: "
              f"{ENGINE_PACKAGES[exc.name]}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `sparsemat engine status | head -3`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("sparsemat: interrupted; frames already written are complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
