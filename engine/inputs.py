"""What ``matte`` and ``preview`` read, checked before anything loads: the plates and priors as
patterns, the colourspace they are decoded from, and outputs that would overwrite them."""
from __future__ import annotations

import os

from .sequence import Pattern, SequenceError, check_same_kind, parse_pattern
from .validation import UsageError

NEEDS_A_SOURCE = ("nothing to matte with: give --checkpoint PATH (or set SPARSEMAT_CHECKPOINT) to use the "
                  "SparseMat network, or --prior PATTERN (a coarse alpha per frame, any resolution) to refine "
                  "it with the weight-free guided refiner")


def plates(args) -> tuple[Pattern, Pattern | None]:
    """INPUT and --prior as patterns: --prior is a sequence exactly when INPUT is, and
    --input-colorspace names a colourspace that can be decoded (checked here, not once per frame
    after the model has loaded)."""
    from .imageio import check_colourspace

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


def check_priors(prior: Pattern | None, frames: list) -> None:
    """UsageError when ``prior`` names no existing file for any of ``frames`` (a typo in the
    pattern), said once now rather than once a frame later. Priors missing for some frames
    only fail those frames."""
    if prior is None:
        return
    if not any(os.path.isfile(prior.path(frame)) for frame in frames):
        if not prior.is_sequence:
            raise UsageError(f"--prior file not found: {prior.text}")
        raise UsageError(f"no frames match --prior '{prior.text}': none of the {len(frames)} frame(s) to matte has "
                         f"its prior (the first would be {prior.path(frames[0])})")


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
