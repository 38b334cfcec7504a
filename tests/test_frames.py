"""Frame ranges and keyframe pre-roll: the rules behind `sparsemat matte` and the Nuke node."""
from __future__ import annotations

import pytest

from sparsemat.plugin.frames import parse_frame_range, with_preroll


def everything(frame: int) -> bool:
    return True


def test_without_an_interval_nothing_is_pre_rolled():
    assert with_preroll([5, 9, 3], 0, everything) == [(5, True), (9, True), (3, True)]


def test_a_run_starts_at_its_keyframe_and_continues_the_stream_after():
    assert with_preroll([23, 24, 25], 10, everything) == [(20, False), (21, False), (22, False),
                                                          (23, True), (24, True), (25, True)]
    assert with_preroll([23], 10, everything, previous=22) == [(23, True)]


def test_a_gap_is_filled_from_the_last_frame_matted_not_again_from_the_keyframe():
    assert with_preroll([12, 15], 10, everything) == [(10, False), (11, False), (12, True),
                                                      (13, False), (14, False), (15, True)]
    assert with_preroll([15], 10, everything, previous=13) == [(14, False), (15, True)]


def test_a_frame_before_the_last_one_matted_is_pre_rolled_from_its_keyframe_again():
    assert with_preroll([23, 21], 10, everything) == [(20, False), (21, False), (22, False), (23, True),
                                                      (20, False), (21, True)]


def test_pre_roll_stops_where_the_inputs_stop():
    assert with_preroll([23], 10, lambda frame: frame >= 22) == [(22, False), (23, True)]
    assert with_preroll([20], 10, everything) == [(20, True)]  # a keyframe needs nothing before it


def test_a_frame_range_of_millions_is_refused_before_it_is_built():
    """A typo such as 1001-1100000000 took gigabytes for its frame list before anything was checked."""
    with pytest.raises(ValueError, match="over 2,000,000 frames"):
        parse_frame_range("1001-1100000000")
    assert len(parse_frame_range("1-2000000")) == 2_000_000
