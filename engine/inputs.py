"""What ``matte`` and ``preview`` read, checked before anything loads: the plates, priors,
trimaps and clean plates as patterns, the colourspace they are decoded from, and outputs that would overwrite them."""
from __future__ import annotations

import os

from .sequence import Pattern, SequenceError, check_same_kind, parse_pattern
from .validation import UsageError

NEEDS_A_SOURCE = ("nothing to matte with: give --checkpoint PATH (or set SPARSEMAT_CHECKPOINT) to use the "
                  "SparseMat network, or --prior PATTERN (a coarse alpha per frame, any resolution), --trimap "
                  "PATTERN or --clean-plate PATH to refine it with the weight-free guided refiner")


def plates(args) -> tuple[Pattern, Pattern | None, Pattern | None, Pattern | None]:
    """INPUT, --prior, --trimap and --clean-plate as patterns: a prior or trimap is a sequence exactly
    when INPUT is, a clean plate one file for all frames or a sequence of INPUT's; and
    --input-colorspace names a colourspace that can be decoded (checked here, not once per frame
    after the model has loaded)."""
    from .imageio import check_colourspace

    if args.prior and args.clean_plate:
        raise UsageError("--prior and --clean-plate both replace the network's prior: give one")
    try:
        source = parse_pattern(args.input)
        guides = [parse_pattern(text) if text else None for text in (args.prior, args.trimap, args.clean_plate)]
        for flag, guide in zip(("--prior", "--trimap"), guides):
            if guide is not None:
                check_same_kind(source, "INPUT", guide, flag)
        if guides[2] is not None and guides[2].is_sequence:
            check_same_kind(source, "INPUT", guides[2], "a --clean-plate sequence")
    except SequenceError as exc:
        raise UsageError(str(exc)) from exc
    if args.colourspace is not None:
        try:
            check_colourspace(args.colourspace)
        except ValueError as exc:
            raise UsageError(f"--input-colorspace: {exc}") from exc
    return source, *guides


def check_guides(frames: list, **guides: Pattern | None) -> None:
    """UsageError when a guide (``prior=``, ``trimap=``, ``clean_plate=``: the pattern of its flag) names no
    existing file for any of ``frames`` (a typo in the pattern), said once now rather than once a
    frame later. Guides missing for some frames only fail those frames."""
    for name, guide in guides.items():
        if guide is None or any(os.path.isfile(guide.path(frame)) for frame in frames):
            continue
        option, what = "--" + name.replace("_", "-"), name.replace("_", " ")
        if not guide.is_sequence:
            raise UsageError(f"{option} file not found: {guide.text}")
        raise UsageError(f"no frames match {option} '{guide.text}': none of the {len(frames)} frame(s) to matte has "
                         f"its {what} (the first would be {guide.path(frames[0])})")


def keyframe_alphas(values: list[str] | None, source: Pattern, flag: str = "--keyframe-alpha",
                    what: str = "keyframe") -> dict:
    """``flag``'s values (``N=PATH``, or a pattern naming the keyframes whose files exist) as frame
    -> file; UsageError for a frame (a ``what``) whose plate is not on disk or a value that says
    neither."""
    from .sequence import find_frames

    keys: dict = {}
    for value in values or ():
        number, _, path = value.partition("=")
        if path and number.strip().isdigit():
            keys[int(number)] = path
            continue
        try:
            pattern = parse_pattern(value)
        except SequenceError as exc:
            raise UsageError(f"{flag}: {exc}") from exc
        if not pattern.is_sequence:
            raise UsageError(f"{flag} takes N=PATH or a sequence pattern, not {value!r}")
        try:
            found = find_frames(pattern)
        except SequenceError:
            found = []
        if not found:
            raise UsageError(f"{flag} '{value}' names no file")
        keys.update((frame, pattern.path(frame)) for frame in found)
    for frame, path in sorted(keys.items()):
        if not os.path.isfile(source.path(frame)):
            raise UsageError(f"{what} {frame} is outside the plate's frames: {source.path(frame)} does not exist")
        if not os.path.isfile(path):
            raise UsageError(f"{flag} file not found: {path}")
    return keys


def check_clean_plate_size(plate: Pattern | None, source: Pattern, frames: list) -> None:
    """UsageError when one clean plate for every frame has another size than the first frame: said
    once, not once a frame. A sequence's plates are checked with their frames."""
    from .imageio import image_size

    if plate is None or plate.is_sequence:
        return
    sizes = image_size(plate.text), image_size(source.path(frames[0]))
    if None not in sizes and sizes[0] != sizes[1]:
        raise UsageError(f"--clean-plate is {sizes[0][0]}x{sizes[0][1]}, the plates {sizes[1][0]}x{sizes[1][1]} "
                         f"({source.path(frames[0])}): a clean plate must be the frames' size")


def refuse_overwriting(writes, reads, what: str = "OUTPUT") -> None:
    """UsageError when a file to write is a file to read, however either is spelled (%04d or ####,
    relative or absolute, through symbolic or hard links): a run would replace the plates it mattes."""
    inputs = {key: path for path in reads for key in _file_keys(path)}
    for path in writes:
        for key in _file_keys(path):
            if key in inputs:
                raise UsageError(f"{what} would overwrite the input file {inputs[key]}: write the output elsewhere")


def _file_keys(path: str) -> list:
    """The resolved path, and the (device, inode) of an existing file: one file under two names (a
    hard link, another case on a case-insensitive file system) has one identity."""
    try:
        info = os.stat(path)
    except OSError:
        return [os.path.realpath(path)]
    return [os.path.realpath(path), (info.st_dev, info.st_ino)]
