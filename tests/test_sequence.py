"""Frame sequence patterns, finding frames on disk and frame range parsing."""
from __future__ import annotations

from pathlib import Path

import pytest

from sparsemat.engine.sequence import (Pattern, SequenceError, check_same_kind, find_frames, parse_frame_range,
                                       parse_pattern, select_frames)


@pytest.mark.parametrize(
    ("text", "frame", "expected"),
    [
        ("clip/f.%04d.png", 7, "clip/f.0007.png"),
        ("clip/f.####.png", 7, "clip/f.0007.png"),
        ("clip/f.%04d.png", 12345, "clip/f.12345.png"),
        ("f.%d.exr", 12345, "f.12345.exr"),
        ("f.%d.exr", 0, "f.0.exr"),
        ("f.#.exr", 3, "f.3.exr"),
        ("f_%06d", 42, "f_000042"),
    ],
)
def test_sequence_paths(text: str, frame: int, expected: str) -> None:
    pattern = parse_pattern(text)
    assert pattern.is_sequence
    assert pattern.text == text
    assert pattern.path(frame) == expected


def test_single_file_is_the_same_path_for_every_frame() -> None:
    pattern = parse_pattern("plates/still.exr")
    assert not pattern.is_sequence
    assert pattern.path(None) == "plates/still.exr"
    assert pattern.path(1001) == "plates/still.exr"


def test_pattern_built_directly_equals_parsed() -> None:
    assert Pattern("f.%04d.png") == parse_pattern("f.%04d.png")
    assert Pattern("f.%04d.png").padding == 4


def test_sequence_needs_a_frame_number() -> None:
    with pytest.raises(SequenceError, match="'f.%04d.png' is a sequence"):
        parse_pattern("f.%04d.png").path(None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("f.%04d.%04d.png", "has 2 frame tokens"),
        ("f.####_%d.png", "has 2 frame tokens"),
        ("f.##.##.png", "has 2 frame tokens"),
        ("f.%4d.png", "space padding"),
        ("shot_%03d/f.png", "folder name"),
    ],
)
def test_bad_patterns_are_refused(text: str, message: str) -> None:
    with pytest.raises(SequenceError, match=message) as caught:
        parse_pattern(text)
    assert f"'{text}'" in str(caught.value)


def make_files(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


@pytest.mark.parametrize("token", ["%04d", "####"])
def test_find_frames_with_gaps_and_strays(tmp_path: Path, token: str) -> None:
    clip = tmp_path / "clip"
    make_files(
        clip,
        [
            "f.0005.png",
            "f.0001.png",
            "f.0002.png",
            "f.0999.png",
            "f.10000.png",  # wider than the padding: printf writes it like this
            "f.00998.png",  # extra leading zero: not how printf writes 998
            "f.001.png",  # too narrow
            "f.0003.jpg",
            "f.0004.png.tmp",
            "g.0006.png",
            "f.abcd.png",
        ],
    )
    (clip / "f.0007.png").mkdir()  # a folder, not a frame
    pattern = parse_pattern(str(clip / f"f.{token}.png"))
    frames = find_frames(pattern)
    assert frames == [1, 2, 5, 999, 10000]
    assert all(Path(pattern.path(frame)).is_file() for frame in frames)


def test_find_frames_unpadded_accepts_any_width(tmp_path: Path) -> None:
    make_files(tmp_path, ["f.1.exr", "f.10.exr", "f.100.exr", "f.1000.exr", "f.007.exr"])
    assert find_frames(parse_pattern(str(tmp_path / "f.%d.exr"))) == [1, 10, 100, 1000]


def test_find_frames_in_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_files(tmp_path, ["f.0003.png", "f.0002.png"])
    monkeypatch.chdir(tmp_path)
    assert find_frames(parse_pattern("f.####.png")) == [2, 3]


def test_find_frames_without_matches(tmp_path: Path) -> None:
    make_files(tmp_path, ["f.0001.jpg"])
    text = str(tmp_path / "f.%04d.png")
    with pytest.raises(SequenceError, match=f"^no frames match '{text}'$"):
        find_frames(parse_pattern(text))


def test_find_frames_in_a_missing_folder(tmp_path: Path) -> None:
    text = str(tmp_path / "missing" / "f.%04d.png")
    with pytest.raises(SequenceError, match=f"no frames match '{text}'"):
        find_frames(parse_pattern(text))


def test_find_frames_of_a_single_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SequenceError, match="single file"):
        find_frames(parse_pattern(str(tmp_path / "still.png")))


def test_select_frames_of_a_sequence_and_of_a_single_file(tmp_path: Path) -> None:
    make_files(tmp_path, ["f.0003.png", "f.0001.png"])
    sequence = parse_pattern(str(tmp_path / "f.####.png"))
    assert select_frames(sequence, None) == [1, 3]
    assert select_frames(sequence, "2-4") == [2, 3, 4]  # what is asked for, on disk or not
    single = parse_pattern(str(tmp_path / "f.0001.png"))
    assert select_frames(single, None) == [None]
    with pytest.raises(SequenceError, match="--frames needs a sequence pattern, not the single file"):
        select_frames(single, "1")


def test_check_same_kind_names_both_arguments() -> None:
    check_same_kind(parse_pattern("a.%04d.png"), "INPUT", parse_pattern("b.####.exr"), "OUTPUT")
    check_same_kind(parse_pattern("a.png"), "INPUT", parse_pattern("b.exr"), "OUTPUT")
    with pytest.raises(SequenceError, match="^INPUT and --prior must both be sequence patterns"):
        check_same_kind(parse_pattern("a.png"), "INPUT", parse_pattern("p.####.exr"), "--prior")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5", [5]),
        ("1001-1005", [1001, 1002, 1003, 1004, 1005]),
        ("3-3", [3]),
        ("1-10x2", [1, 3, 5, 7, 9]),
        ("1-10x20", [1]),
        ("1,3,5-7", [1, 3, 5, 6, 7]),
        ("7, 1-3, 2", [1, 2, 3, 7]),
        ("1-3 7", [1, 2, 3, 7]),
        ("0", [0]),
    ],
)
def test_parse_frame_range(text: str, expected: list[int]) -> None:
    assert parse_frame_range(text) == expected


@pytest.mark.parametrize("text", ["", "a", "1-", "-5", "1--3", "1,,3", "1-3x", "1-3x0", "5x2", "1.5", "10-1"])
def test_malformed_frame_ranges_are_refused(text: str) -> None:
    with pytest.raises(SequenceError, match=f"'{text}'"):
        parse_frame_range(text)
