"""Frame sequence patterns ("plate.%04d.exr", "plate.####.exr") and frame ranges ("1001-1100").

A pattern holds at most one frame token in its file name: printf style ``%d`` / ``%0Nd``, or a
run of N hashes (zero-padded to N digits). A pattern without a token names a single file.
Frame numbers are formatted the way printf formats them, so a padded token matches numbers of
exactly that width and wider numbers without extra leading zeros (``%04d``: 0999, 10000).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from sparsemat.plugin import frames as frame_ranges

IMAGE_EXTENSIONS = (".exr", ".png", ".tif", ".tiff", ".jpg", ".jpeg")
# "%d", "%4d", "%04d" (the space-padded form is rejected later) or a run of hashes.
_TOKEN = re.compile(r"%([0-9]*)d|#+")


class SequenceError(ValueError):
    """A pattern, frame range or sequence on disk is unusable."""


@dataclass(frozen=True)
class Pattern:
    """A file path, with one frame token for a sequence; build it with ``Pattern(text)``."""

    text: str
    head: str = field(init=False, compare=False)  # everything before the frame token
    tail: str = field(init=False, compare=False)  # everything after it
    padding: int | None = field(init=False, compare=False)  # digits; None for a single file

    def __post_init__(self) -> None:
        tokens = list(_TOKEN.finditer(self.text))
        if len(tokens) > 1:
            raise SequenceError(
                f"pattern '{self.text}' has {len(tokens)} frame tokens; exactly one is allowed"
            )
        if not tokens:
            head, tail, padding = self.text, "", None
        else:
            token = tokens[0]
            head, tail = self.text[: token.start()], self.text[token.end() :]
            padding = _token_padding(self.text, token)
            if os.sep in tail or (os.altsep and os.altsep in tail):
                raise SequenceError(
                    f"pattern '{self.text}' has its frame token in a folder name, not the file name"
                )
        object.__setattr__(self, "head", head)
        object.__setattr__(self, "tail", tail)
        object.__setattr__(self, "padding", padding)

    @property
    def is_sequence(self) -> bool:
        return self.padding is not None

    def path(self, frame: int | None) -> str:
        """The file of ``frame``; a single file is the same path whatever the frame."""
        if not self.is_sequence:
            return self.text
        if frame is None:
            raise SequenceError(f"pattern '{self.text}' is a sequence and needs a frame number")
        if frame < 0:
            raise SequenceError(f"pattern '{self.text}' cannot name negative frame {frame}")
        return f"{self.head}{frame:0{self.padding}d}{self.tail}"


def parse_pattern(text: str) -> Pattern:
    return Pattern(text)


def find_frames(pattern: Pattern) -> list[int]:
    """Sorted frame numbers whose file exists on disk: ``pattern.path(frame)`` exists for each."""
    if not pattern.is_sequence:
        raise SequenceError(f"'{pattern.text}' is a single file, not a frame sequence")
    folder, name_head = os.path.split(pattern.head)
    folder = folder or "."
    name = re.compile(re.escape(name_head) + r"([0-9]+)" + re.escape(pattern.tail))
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        raise SequenceError(f"no frames match '{pattern.text}': folder '{folder}' does not exist") from None
    frames = []
    for entry in entries:
        match = name.fullmatch(entry.name)
        if match and _is_formatted(match.group(1), pattern.padding) and entry.is_file():
            frames.append(int(match.group(1)))
    if not frames:
        raise SequenceError(f"no frames match '{pattern.text}'")
    return sorted(frames)


def check_same_kind(first: Pattern, first_name: str, second: Pattern, second_name: str) -> None:
    """SequenceError unless both are sequence patterns or both are single files."""
    if first.is_sequence != second.is_sequence:
        raise SequenceError(f"{first_name} and {second_name} must both be sequence patterns (%04d or ####) "
                            f"or both single files")


def select_frames(pattern: Pattern, frames_text: str | None) -> list:
    """The frames to process: those of ``frames_text`` (a frame range), else those on disk; [None]
    for a single file, which takes no frame range."""
    if not pattern.is_sequence:
        if frames_text:
            raise SequenceError(f"--frames needs a sequence pattern, not the single file '{pattern.text}'")
        return [None]
    return parse_frame_range(frames_text) if frames_text else find_frames(pattern)


def parse_frame_range(text: str) -> list[int]:
    """Frames of "1001-1100", "5", "1-10x2" (every 2nd) or a list of these; sorted, unique
    (the grammar is ``sparsemat.plugin.frames``', shared with the hosts)."""
    try:
        return frame_ranges.parse_frame_range(text)
    except ValueError as exc:
        raise SequenceError(str(exc)) from None


def _token_padding(text: str, token: re.Match[str]) -> int:
    if token.group(0).startswith("#"):
        return len(token.group(0))
    width = token.group(1)
    if not width:
        return 1
    if not width.startswith("0"):
        raise SequenceError(
            f"pattern '{text}' uses space padding '{token.group(0)}'; use '%0{width}d' for zeros"
        )
    return max(int(width), 1)  # "%00d" pads like "%d"


def _is_formatted(digits: str, padding: int) -> bool:
    """Whether printf with this zero padding writes these digits: 0999 and 10000 for 4, not 00999."""
    return len(digits) == padding or (len(digits) > padding and not digits.startswith("0"))


def images_by_name(folder: str) -> dict[str, str]:
    """A dataset folder's images, by file name without the extension (how datasets pair an image
    with its matte, trimap or foreground), in name order."""
    return {os.path.splitext(name)[0]: os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, name))}
