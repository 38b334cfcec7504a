"""``sparsemat train`` and ``sparsemat finetune``: the command line of ``trainer``.

    sparsemat train DATA --checkpoint BASE --out RUN.pth [--validation DATA] [--config RECIPE.toml] [recipe flags]
    sparsemat train DATA --out RUN.pth --resume
    sparsemat finetune PLATES --keyframe N=ALPHA ... --checkpoint BASE --out SHOT.pth [--prior PATTERN]
        [--held-out N=ALPHA ...] [--steps N] [--minutes M]

Everything is checked before the model loads: the dataset's files, the keyframes' plates and
mattes, and that the output can be written without replacing an input.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

from .validation import UsageError, checkpoint_file

# Recipe fields and their flags; each flag's default is None so that a value given on the command
# line wins over a --config file's, which wins over a resumed run's, which wins over the recipe's.
RECIPE_FLAGS = {"learning_rate": "--learning-rate", "betas": "--betas", "epochs": "--epochs",
                "decay_every": "--decay-every", "decay": "--decay", "min_learning_rate": "--min-learning-rate",
                "batch": "--batch", "rescale": "--rescale", "crop": "--crop", "patch_crops": "--patch-crops",
                "patch_size": "--patch-size", "flips": "--flips"}


def _numbers(kind, count: int | None = None):
    def parse(text: str):
        try:
            values = tuple(kind(part) for part in str(text).split(","))
        except ValueError:
            values = ()
        if not values or (count is not None and len(values) != count) or any(value <= 0 for value in values):
            wanted = f"{count} " if count else ""
            raise argparse.ArgumentTypeError(f"expected {wanted}comma-separated numbers over 0, got {text}")
        return values
    return parse


def _betas(text: str) -> tuple[float, float]:
    values = _numbers(float, 2)(text)
    if not all(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected two numbers over 0 and under 1, got {text}")
    return values


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number over 0 and at most 1, got {text}")
    return value


def add_train_commands(commands, positive_int, non_negative_int, positive, device_type) -> None:
    """Add ``train`` and ``finetune`` to an argparse subparsers object; the type functions are the
    command line's own."""
    from .recipe import Recipe

    recipe = Recipe()
    train = commands.add_parser(
        "train", help="train the sparse refiner on a dataset with the published recipe",
        description="Train the sparse refiner (the prior network stays frozen) with the published recipe, every "
                    "value of which is a flag. DATA is a file list of image,alpha[,fg,bg] lines (paths relative to "
                    "the list) or a folder with alpha/ and image/ (optional fg/ and bg/ by name, for the "
                    "composition loss) or fg/ and bg/ (composited over random backgrounds). The checkpoint is "
                    "written atomically in the published layout at every epoch's end and on stopping; --resume "
                    "continues it.")
    train.add_argument("data", metavar="DATA", help="file list or dataset folder")
    train.add_argument("--checkpoint", default=os.environ.get("SPARSEMAT_CHECKPOINT"),
                       help="the published-format checkpoint to start from, with a trained prior network "
                            "(default: $SPARSEMAT_CHECKPOINT)")
    train.add_argument("--out", required=True, metavar="RUN.pth", help="the checkpoint to write")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out: its weights, optimizer state, step and schedule")
    train.add_argument("--validation", metavar="DATA", help="held-out file list or folder, matted at every epoch's "
                                                            "end and scored on its fixed validation band")
    train.add_argument("--config", metavar="FILE.toml",
                       help="recipe values as TOML, keys named as the flags (learning-rate = 1e-4); flags win")
    train.add_argument("--learning-rate", type=positive, help=f"Adam's learning rate (default {recipe.learning_rate})")
    train.add_argument("--betas", type=_betas, metavar="B1,B2",
                       help=f"Adam's betas (default {','.join(map(str, recipe.betas))})")
    train.add_argument("--epochs", type=positive_int, help=f"epochs (default {recipe.epochs})")
    train.add_argument("--decay-every", type=positive_int, metavar="EPOCHS",
                       help=f"multiply the learning rate by --decay every so many epochs (default {recipe.decay_every})")
    train.add_argument("--decay", type=_fraction, help=f"the learning rate's decay factor (default {recipe.decay})")
    train.add_argument("--min-learning-rate", type=positive,
                       help=f"the learning rate's floor (default {recipe.min_learning_rate})")
    train.add_argument("--batch", type=positive_int, help=f"patches a step (default {recipe.batch})")
    train.add_argument("--rescale", type=positive_int, metavar="PIXELS",
                       help=f"short side of the prior network's copy of each image (default {recipe.rescale})")
    train.add_argument("--crop", type=positive_int, metavar="PIXELS",
                       help=f"square crop of that copy the prior network sees (default {recipe.crop})")
    train.add_argument("--patch-crops", type=_numbers(int), metavar="A,B,...",
                       help=f"full-resolution patch sizes drawn from (default {','.join(map(str, recipe.patch_crops))})")
    train.add_argument("--patch-size", type=positive_int, metavar="PIXELS",
                       help=f"each patch is resized to this (default {recipe.patch_size})")
    train.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                       help="mirror patches at random (default on)")
    train.add_argument("--seed", type=non_negative_int, help="seeds the data order and patches (default 0; a resumed run keeps its own)")
    train.add_argument("--max-steps", type=positive_int, metavar="N", help="stop after N steps in all (a trial run)")
    train.add_argument("--save-every", type=positive_int, metavar="STEPS",
                       help="also write the checkpoint every so many steps (default: at each epoch's end)")
    _add_common(train, device_type)
    train.set_defaults(run=run_train, recipe_types={action.dest: action.type for action in train._actions
                                                    if action.dest in RECIPE_FLAGS})

    finetune = commands.add_parser(
        "finetune", help="adapt the refiner to one shot from a few keyframes' mattes",
        description="Adapt a checkpoint's refiner to one shot: train on crops of the band inference refines on "
                    "each keyframe, with the shot's own plates and the artist's matte as the label, then write "
                    "the adapted checkpoint for sparsemat matte --checkpoint. Give the same --prior as when "
                    "matting, if any.")
    finetune.add_argument("plates", metavar="PLATES", help="the shot's plates, a sequence pattern (shot/plate.####.exr)")
    finetune.add_argument("--keyframe", action="append", required=True, metavar="N=ALPHA|PATTERN",
                          help="an artist's matte for frame N (repeatable), or a pattern whose files are keyframes")
    finetune.add_argument("--checkpoint", default=os.environ.get("SPARSEMAT_CHECKPOINT"),
                          help="the checkpoint to adapt (default: $SPARSEMAT_CHECKPOINT)")
    finetune.add_argument("--out", required=True, metavar="SHOT.pth", help="the adapted checkpoint to write")
    finetune.add_argument("--prior", metavar="PATTERN", help="the coarse alpha per frame matting will use, as for matte")
    finetune.add_argument("--held-out", action="append", default=[], metavar="N=ALPHA",
                          help="a matte not trained on, whose frame is matted and scored before and after")
    finetune.add_argument("--steps", type=positive_int,
                          help="optimiser steps (default 300, or as many as --minutes allows)")
    finetune.add_argument("--minutes", type=positive, help="stop after so many minutes (with --steps: whichever ends first)")
    finetune.add_argument("--crop", type=positive_int, default=512, metavar="PIXELS",
                          help="square crops of the keyframes, at full resolution (default 512)")
    finetune.add_argument("--batch", type=positive_int, default=2, help="crops a step (default 2)")
    finetune.add_argument("--learning-rate", type=positive, default=1e-4, help="Adam's learning rate (default 1e-4)")
    finetune.add_argument("--seed", type=non_negative_int, default=0, help="seeds the crops (default 0)")
    _add_common(finetune, device_type)
    finetune.set_defaults(run=run_finetune)


def _add_common(command, device_type) -> None:
    command.add_argument("--device", default="auto", type=device_type, metavar="DEVICE",
                         help="auto, cpu, cuda or cuda:N, as for matte (default auto)")
    command.add_argument("--input-colorspace", dest="colourspace", metavar="NAME",
                         help="how the images are encoded, as for matte (default: linear for EXR, srgb otherwise)")
    command.add_argument("--quiet", action="store_true", help="no progress bar")


def _recipe_values(args) -> dict:
    """The recipe values given: --config's, then the flags' over them."""
    values = _config_values(args.config, args.recipe_types) if args.config else {}
    values.update({name: getattr(args, name) for name in RECIPE_FLAGS if getattr(args, name) is not None})
    return values


def _config_values(path: str, types: dict) -> dict:
    try:
        import tomllib
    except ImportError as exc:  # Python 3.10
        raise UsageError("--config needs Python 3.11 or later (its tomllib); give the values as flags") from exc

    try:
        with open(path, "rb") as file:
            config = tomllib.load(file)
    except OSError as exc:
        raise UsageError(f"--config {path} cannot be read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path} is not valid TOML: {exc}") from exc
    values = {}
    for key, value in config.items():
        name = key.replace("-", "_")
        if name not in RECIPE_FLAGS:
            raise UsageError(f"--config {path}: unknown key {key!r} (known: "
                             f"{', '.join(flag[2:] for flag in RECIPE_FLAGS.values())})")
        if name == "flips":
            if not isinstance(value, bool):
                raise UsageError(f"--config {path}: flips must be true or false")
            values[name] = value
            continue
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        try:
            values[name] = types[name](text)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise UsageError(f"--config {path}: {key}: {exc}") from exc
    return values


def _writable(path: str, flag: str) -> str:
    """``path`` as an absolute path, checked to be a new file in a writable folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a folder: name the checkpoint file to write")
    if not os.path.isdir(folder):
        raise UsageError(f"{flag}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag}: the folder {folder} is not writable")
    return os.path.abspath(path)


def _colourspace(args) -> None:
    from .imageio import check_colourspace

    if args.colourspace is not None:
        try:
            check_colourspace(args.colourspace)
        except ValueError as exc:
            raise UsageError(f"--input-colorspace: {exc}") from exc


def run_train(args) -> int:
    from .inputs import refuse_overwriting
    from .loading import ModelLoadError, resolve_device
    from .trainer import TrainingError, train
    from .training_data import DatasetError, open_dataset

    out = _writable(args.out, "--out")
    if args.resume and not os.path.isfile(out):
        raise UsageError(f"--resume: {out} does not exist (start the run without --resume)")
    if not args.resume and os.path.exists(out):
        raise UsageError(f"--out {out} exists: give --resume to continue its run, or another --out")
    base = None if args.resume else checkpoint_file(args.checkpoint)
    if not args.resume and base is None:
        raise UsageError("give --checkpoint BASE (or set SPARSEMAT_CHECKPOINT): the refiner trains on a "
                         "pretrained, frozen prior network")
    _colourspace(args)
    values = _recipe_values(args)
    try:
        dataset = open_dataset(args.data)
        validation = open_dataset(args.validation) if args.validation else None
        entries = dataset.entries + (validation.entries if validation else ())
        refuse_overwriting([out], [name for entry in entries for name in vars(entry).values() if name], "--out")
        run = train(dataset, out, values, base=base, resume=args.resume, validation=validation,
                    device=resolve_device(args.device), seed=args.seed, colourspace=args.colourspace,
                    max_steps=args.max_steps, save_every=args.save_every or 0, progress=not args.quiet,
                    log=lambda line: print(line, file=sys.stderr))
    except (DatasetError, TrainingError, ModelLoadError) as exc:
        raise UsageError(str(exc)) from exc
    except KeyboardInterrupt:
        print(f"sparsemat: interrupted; {out} keeps the steps done (if any): continue with --resume", file=sys.stderr)
        return 130
    epochs = run.recipe.epochs
    print(f"wrote {out}: step {run.step}, epoch {min(run.epoch + (run.step_in_epoch > 0), epochs)} of {epochs}"
          + ("; continue with --resume" if run.epoch < epochs else ""))
    return 0


def run_finetune(args) -> int:
    from .inputs import keyframe_alphas
    from .loading import ModelLoadError, resolve_device
    from .sequence import SequenceError, check_same_kind, parse_pattern
    from .trainer import Keyframe, TrainingError, describe_errors, finetune

    base = checkpoint_file(args.checkpoint)
    if base is None:
        raise UsageError("give --checkpoint BASE (or set SPARSEMAT_CHECKPOINT): the checkpoint to adapt")
    out = _writable(args.out, "--out")
    if os.path.exists(out):
        raise UsageError(f"--out {out} exists: name a new file (a fine-tune never replaces a checkpoint)")
    _colourspace(args)
    try:
        plates = parse_pattern(args.plates)
        prior = parse_pattern(args.prior) if args.prior else None
        if not plates.is_sequence:
            raise UsageError(f"PLATES must be a sequence pattern (shot/plate.####.exr), not {args.plates}")
        if prior is not None:
            check_same_kind(plates, "PLATES", prior, "--prior")
    except SequenceError as exc:
        raise UsageError(str(exc)) from exc
    keys = keyframe_alphas(args.keyframe, plates, "--keyframe")
    held = keyframe_alphas(args.held_out, plates, "--held-out", "held-out frame") if args.held_out else {}
    both = sorted(set(keys) & set(held))
    if both:
        raise UsageError(f"frame {both[0]} is both a --keyframe and --held-out: a held-out matte must not be trained on")

    def keyframe(frame: int, alpha: str) -> Keyframe:
        if prior is not None and not os.path.isfile(prior.path(frame)):
            raise UsageError(f"--prior file not found for frame {frame}: {prior.path(frame)}")
        return Keyframe(frame, plates.path(frame), alpha, prior.path(frame) if prior else None)

    trained = [keyframe(frame, alpha) for frame, alpha in sorted(keys.items())]
    scored = [keyframe(frame, alpha) for frame, alpha in sorted(held.items())]
    try:
        report = finetune(trained, base, out, scored, steps=args.steps, minutes=args.minutes, crop_size=args.crop,
                          batch=args.batch, learning_rate=args.learning_rate, seed=args.seed,
                          device=resolve_device(args.device), colourspace=args.colourspace, progress=not args.quiet)
    except (TrainingError, ModelLoadError) as exc:
        raise UsageError(str(exc)) from exc
    if report.interrupted:
        print(f"sparsemat: interrupted; wrote {out} with the {report.steps} steps done (held-out frames not scored "
              f"after)", file=sys.stderr)
        return 130
    for frame in report.held_out_before:
        print(f"held-out frame {frame}: before {describe_errors(report.held_out_before[frame])}")
        print(f"held-out frame {frame}: after  {describe_errors(report.held_out_after[frame])}")
    print(f"wrote {out}: {report.steps} steps on {len(trained)} keyframe(s) in {report.seconds:.0f} s; matte with "
          f"--checkpoint {out}" + (f" --prior {args.prior}" if args.prior else ""))
    return 0
