"""Frame ranges, the temporal continuity rule and keyframe pre-roll: one grammar and one rule
for the command line, the engine and the hosts.

Plain Python (the Nuke integration imports it before the engine client's packages).
"""
from __future__ import annotations

import re
from typing import Callable

# "5", "1001-1100" or "1-10x2"; a range list joins these with commas or spaces.
_PART = re.compile(r"([0-9]+)(?:-([0-9]+)(?:x([0-9]+))?)?")
# Over a day of 24 fps footage: more is a typo (1001-1100000000), whose list alone took gigabytes.
MAX_FRAMES = 2_000_000


def parse_frame_range(text: str) -> list[int]:
    """Frames of "1001-1100", "5", "1-10x2" (every 2nd) or a list of these separated by commas or
    spaces; sorted, unique. ValueError naming ``text`` when it is malformed."""
    frames: set[int] = set()
    for part in re.split(r"\s*,\s*|\s+", text.strip()):
        match = _PART.fullmatch(part)
        if match is None:
            raise ValueError(f"malformed frame range '{text}': expected forms like '1001-1100', '5', '1-10x2' "
                             f"or '1,3,5-7'")
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) else start
        step = int(match.group(3)) if match.group(3) else 1
        if end < start:
            raise ValueError(f"frame range '{text}' ends at {end}, before its start {start}")
        if step == 0:
            raise ValueError(f"frame range '{text}' has a step of 0")
        part_frames = range(start, end + 1, step)
        if len(frames) + len(part_frames) > MAX_FRAMES:
            raise ValueError(f"frame range '{text}' has over {MAX_FRAMES:,} frames; a typo?")
        frames.update(part_frames)
    return sorted(frames)


def is_keyframe(frame: int, keyframe_interval: int) -> bool:
    """Whether ``frame`` starts its stream afresh: a multiple of ``keyframe_interval`` (0: none is)."""
    return keyframe_interval > 0 and frame % keyframe_interval == 0


def continues(previous: int | None, frame: int | None, keyframe_interval: int) -> bool:
    """Whether ``frame`` continues a temporal stream whose last frame is ``previous``: it is the next
    frame number and not a keyframe. Anything else (a jump, a repeat, a first frame) starts over."""
    return (previous is not None and frame is not None and frame == previous + 1
            and not is_keyframe(frame, keyframe_interval))


def with_preroll(frames: list[int], keyframe_interval: int, available: Callable[[int], bool],
                 previous: int | None = None) -> list[tuple[int, bool]]:
    """(frame, asked for) in the order to matte them, so that each frame's alpha is what a run over
    the whole sequence gives. A stream's state restarts at every multiple of ``keyframe_interval``
    (0: never), so a frame that does not continue the stream (``previous``: the last frame matted
    in it, then each frame of the list) is preceded by the frames since its keyframe, or since
    ``previous`` when that is nearer, no further back than ``available`` says inputs exist."""
    work: list[tuple[int, bool]] = []
    for frame in frames:
        if keyframe_interval > 0 and not continues(previous, frame, keyframe_interval):
            start = frame
            while not is_keyframe(start, keyframe_interval) and available(start - 1):
                start -= 1
            if previous is not None and start <= previous < frame:
                start = previous + 1  # the stream's state at ``previous`` is already the right one
            work += [(f, False) for f in range(start, frame)]
        work.append((frame, True))
        previous = frame
    return work


def keyframes_around(frame: int, keyframes) -> tuple[int | None, int | None]:
    """The last keyframe before ``frame`` and the first after it (None where there is none): the two
    whose mattes a frame guided by keyframe mattes is carried from."""
    return (max((key for key in keyframes if key < frame), default=None),
            min((key for key in keyframes if key > frame), default=None))
