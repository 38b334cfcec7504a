"""What ``matte`` and ``preview`` read, checked before anything loads: the plates, priors and
trimaps as patterns, the colourspace they are decoded from, and outputs that would overwrite them."""
from __future__ import annotations

import os

from .sequence import Pattern, SequenceError, check_same_kind, parse_pattern
from .validation import UsageError

NEEDS_A_SOURCE = ("nothing to matte with: give --checkpoint PATH (or set SPARSEMAT_CHECKPOINT) to use the "
                  "SparseMat network, or --prior PATTERN (a coarse alpha per frame, any resolution) or --trimap "
                  "PATTERN to refine it with the weight-free guided refiner")


def plates(args) -> tuple[Pattern, Pattern | None, Pattern | None]:
    """INPUT, --prior and --trimap as patterns: each guide is a sequence exactly when INPUT is, and
    --input-colorspace names a colourspace that can be decoded (checked here, not once per frame
    after the model has loaded)."""
    from .imageio import check_colourspace

    try:
        source = parse_pattern(args.input)
        guides = [parse_pattern(text) if text else None for text in (args.prior, args.trimap)]
        for flag, guide in zip(("--prior", "--trimap"), guides):
            if guide is not None:
                check_same_kind(source, "INPUT", guide, flag)
    except SequenceError as exc:
        raise UsageError(str(exc)) from exc
    if args.colourspace is not None:
        try:
            check_colourspace(args.colourspace)
        except ValueError as exc:
            raise UsageError(f"--input-colorspace: {exc}") from exc
    return source, *guides


def check_guides(frames: list, **guides: Pattern | None) -> None:
    """UsageError when a guide (``prior=``, ``trimap=``: a --prior or --trimap pattern) names no
    existing file for any of ``frames`` (a typo in the pattern), said once now rather than once a
    frame later. Guides missing for some frames only fail those frames."""
    for name, guide in guides.items():
        if guide is None or any(os.path.isfile(guide.path(frame)) for frame in frames):
            continue
        if not guide.is_sequence:
            raise UsageError(f"--{name} file not found: {guide.text}")
        raise UsageError(f"no frames match --{name} '{guide.text}': none of the {len(frames)} frame(s) to matte has "
                         f"its {name} (the first would be {guide.path(frames[0])})")


def refuse_overwriting(writes, reads) -> None:
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
