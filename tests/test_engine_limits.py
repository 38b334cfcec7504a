"""An engine no request can hang, exhaust or trick: real engine processes, raw requests."""
from __future__ import annotations

import os
import random
import re
import struct
import time
import zlib

import msgpack
import numpy as np
import pytest
import zmq

from conftest import run_cli, scaled, stop_engine, write_rgb
from sparsemat.engine.daemon import log_file
from sparsemat.plugin.client import EngineClient


def guided_engine(address, runtime, *options) -> int:
    result = run_cli("engine", "start", "--address", address, "--device", "cpu", "--exit-when-idle", "300",
                     *options, env={"XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 0, result.stderr
    return EngineClient(address).hello()["pid"]


@pytest.fixture(scope="module")
def engine(runtime, tmp_path_factory):
    """A weight-free engine (quick), reading files only under its own folder."""
    folder = tmp_path_factory.mktemp("allowed")
    address = f"ipc://{folder}/limits.sock"
    pid = guided_engine(address, runtime, "--allow-files-under", str(folder))
    yield address, pid, folder
    stop_engine(address, runtime)


def ask(address, header: dict, *payload, identity: bytes | None = None, timeout_ms: int = 60000) -> dict:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    if identity:
        socket.setsockopt(zmq.ROUTING_ID, identity)
    socket.connect(address)
    try:
        socket.send_multipart([msgpack.packb(header), *payload])
        assert socket.poll(timeout_ms), f"no reply to {header}"
        return msgpack.unpackb(socket.recv_multipart()[0])
    finally:
        socket.close()


def matte(image: dict, **fields) -> dict:
    return {"v": 1, "id": fields.pop("id", "r"), "op": "matte", "stream": "s", "frame": 1, "image": image,
            "prior": {"shape": [2, 2, 1], "dtype": "float32", "transport": "inline", "frame": 1}, **fields}


PRIOR = np.full((2, 2, 1), 0.5, np.float32).tobytes()


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return int(next(line for line in handle if line.startswith("VmRSS")).split()[1])


def assert_alive(engine) -> None:
    assert EngineClient(engine[0], timeout=5.0).status()["pid"] == engine[1]


def test_a_fifo_sent_as_a_file_is_refused_at_once_and_the_engine_keeps_answering(engine):
    fifo = engine[2] / "plate.exr"
    os.mkfifo(fifo)
    started = time.monotonic()
    reply = ask(engine[0], matte({"transport": "file", "path": str(fifo)}, prior={"transport": "file",
                                                                            "path": str(fifo)}))
    assert time.monotonic() - started < scaled(10) and reply["error"]["code"] == "bad_pixels", reply
    assert "not a readable regular file" in reply["error"]["message"]
    assert_alive(engine)


def test_missing_outside_and_linked_files_are_refused_alike(engine, tmp_path):
    outside = tmp_path / "secret.png"
    write_rgb(outside, np.zeros((8, 8, 3), np.uint8))
    link = engine[2] / "link.png"
    link.symlink_to(outside)
    messages = set()
    for path in (engine[2] / "missing.png", outside, link):
        reply = ask(engine[0], matte({"transport": "file", "path": str(path)}), PRIOR)
        assert reply["error"]["code"] == "bad_pixels"
        messages.add(reply["error"]["message"].replace(str(path), "PATH"))
    assert messages == {"cannot read 'PATH': not a readable regular file under the engine's allowed folders"}
    reply = ask(engine[0], matte({"transport": "file", "path": str(engine[2] / "x.png") + "\0.exr"}), PRIOR)
    assert reply["error"]["code"] == "bad_request" and "NUL" in reply["error"]["message"]


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (its data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_a_file_declaring_a_huge_frame_is_refused_before_it_is_decoded(engine):
    bomb = engine[2] / "bomb.png"
    bomb.write_bytes(_png_claiming(12000, 12000))
    before = rss_kb(engine[1])
    reply = ask(engine[0], matte({"transport": "file", "path": str(bomb)}), PRIOR)
    assert reply["error"]["code"] == "bad_pixels" and "over the limit of" in reply["error"]["message"], reply
    assert rss_kb(engine[1]) - before < 200_000  # kB: nothing of the 432 MB frame was decoded
    assert_alive(engine)


@pytest.mark.parametrize("shape, words", [([20000, 20000, 3], "over the limit of"),
                                          ([1, 20000, 3], "too elongated for the prior network"),
                                          ([1, 262144, 3], "over the limit of")])
def test_frames_too_large_or_too_elongated_are_refused_from_their_shape(engine, shape, words):
    """Any model, the weight-free one too: from the request's shape, before its pixels are read."""
    started = time.monotonic()
    reply = ask(engine[0], matte({"shape": shape, "dtype": "uint8", "transport": "inline", "frame": 2}), PRIOR, b"x")
    assert reply["error"]["code"] == "bad_pixels" and words in reply["error"]["message"], reply
    assert time.monotonic() - started < scaled(5)


def test_shared_memory_is_refused_over_tcp_and_names_must_not_be_paths(engine, runtime):
    reply = ask(engine[0], matte({"shape": [8, 8, 3], "dtype": "uint8", "transport": "shm", "shm": "../etc/passwd"}),
                PRIOR)
    assert reply["error"]["code"] == "bad_request" and "not a path" in reply["error"]["message"]
    address = "tcp://127.0.0.1:47391"
    guided_engine(address, runtime)
    try:
        assert "shm" not in EngineClient(address).hello()["limits"]["transports"]
        reply = ask(address, matte({"shape": [8, 8, 3], "dtype": "uint8", "transport": "shm", "shm": "anything"},
                                   alpha_shm_offset=192), PRIOR)
        assert reply["error"]["code"] == "bad_request" and "ipc://" in reply["error"]["message"], reply
    finally:
        stop_engine(address, runtime)


@pytest.mark.parametrize("header, code", [
    ({"v": 1, "id": 1, "op": "status", "request": [1, 2]}, "bad_request"),
    ({"v": 1.0, "id": 1, "op": "hello"}, "bad_version"),
    ({"v": True, "id": 1, "op": "hello"}, "bad_version"),
    ({"v": 1, "op": "hello"}, "bad_request"),
    ({"v": 1, "id": True, "op": "hello"}, "bad_request"),
    (matte({"shape": [8, True, 3], "dtype": "uint8", "transport": "inline"}), "bad_request"),
    (matte({"shape": [8, 8, 3], "dtype": "uint8", "transport": "inline"}, colourspace=""), "bad_request"),
    (matte({"shape": [8, 8, 3], "dtype": "uint8"}, stream=""), "bad_request"),
    (matte({"shape": [8, 8, 3], "transport": "inline"}), "bad_request"),
], ids=["request-list", "v-float", "v-bool", "no-id", "bool-id", "bool-in-shape", "empty-colourspace", "empty-stream",
        "block-without-dtype"])
def test_fields_the_page_constrains_are_checked_without_a_traceback(engine, header, code):
    reply = ask(engine[0], header, np.zeros(192, np.uint8).tobytes())
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert_alive(engine)


def test_huge_finite_pixels_clip_instead_of_failing(engine):
    huge = np.full((8, 8, 3), 3e38, np.float32)
    reply = ask(engine[0], matte({"shape": [8, 8, 3], "dtype": "float32", "transport": "inline", "frame": 2},
                                 id="huge"), PRIOR, huge.tobytes())
    assert reply["ok"], reply


def test_work_of_a_client_that_went_silent_is_dropped(runtime, tmp_path):
    """A client queues frames, pings while it waits, then dies: its queued frames are not computed
    once its heartbeats have stopped for a while, and a bystander does not wait behind them."""
    address = f"ipc://{tmp_path}/abandoned.sock"
    guided_engine(address, runtime)
    frame = np.random.default_rng(0).integers(0, 256, (2160, 3840, 3), dtype=np.uint8)  # over a second each
    prior = np.ascontiguousarray(np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))[..., None])
    try:
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.ROUTING_ID, b"abandoning")
        socket.connect(address)
        for index in range(8):
            header = {"v": 1, "id": f"gone-{index}", "op": "matte", "stream": f"gone-{index}", "frame": 1,
                      "image": {"shape": list(frame.shape), "dtype": "uint8", "transport": "inline", "frame": 1},
                      "prior": {"shape": list(prior.shape), "dtype": "float32", "transport": "inline", "frame": 2}}
            socket.send_multipart([msgpack.packb(header), frame.tobytes(), prior.tobytes()])
        for ping in range(2):  # heartbeats, as the Python client sends them while it waits
            socket.send(msgpack.packb({"v": 1, "id": f"ping-{ping}", "op": "status", "request": "gone-7"}))
            time.sleep(0.5)
        socket.close()
        bystander = EngineClient(address, timeout=60.0)
        bystander.matte("bystander", 1, frame[:64, :96], prior=prior[..., 0])
        served = bystander.status()["frames_served"]
        bystander.close()
    finally:
        stop_engine(address, runtime)
    assert served < 8, f"{served} frames served: the abandoned queue was computed"
    with open(_log(runtime, address)) as log:
        assert "dropped: its client stopped its heartbeats" in log.read()


def _log(runtime, address) -> str:
    """The engine's log file, as ``engine start`` with this runtime folder placed it."""
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        return log_file(address)
    finally:
        del os.environ["XDG_RUNTIME_DIR"]


def test_a_client_may_queue_only_a_few_requests(engine):
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(engine[0])
    big = np.zeros((512, 512, 3), np.uint8)
    header = matte({"shape": [512, 512, 3], "dtype": "uint8", "transport": "inline", "frame": 2})
    for index in range(12):
        socket.send_multipart([msgpack.packb({**header, "id": f"q{index}", "stream": f"q{index}"}), PRIOR, big.tobytes()])
    replies = []
    while len(replies) < 12 and socket.poll(60000):
        replies.append(msgpack.unpackb(socket.recv_multipart()[0]))
    socket.close()
    busy = [reply for reply in replies if not reply["ok"]]
    assert len(replies) == 12 and busy and all(reply["error"]["code"] == "busy" for reply in busy)
    assert "requests waiting" in busy[0]["error"]["message"]


def test_engines_wait_passively_for_work(engine):
    """OpenMP threads that spin at barriers slowed a frame several times on a busy machine."""
    with open(f"/proc/{engine[1]}/environ", "rb") as handle:
        assert b"OMP_WAIT_POLICY=PASSIVE" in handle.read().split(b"\0")


def _malformed(rng: random.Random) -> list[bytes]:
    """One malformed request: garbage, wrong types, missing or extra fields, lying sizes."""
    values = [None, True, 1.5, -1, 0, 2**63 - 1, "", "x" * 300, [], [1, "a"], {}, {"a": 1}, b"\0\xff", [8, 8, 3],
              [-8, 8, 3], [8, 8, 7], "shm", "file", "inline", "float64", "/dev/zero", "../x", "\0"]
    kind = rng.randrange(6)
    if kind == 0:
        return [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))]
    header = {"v": 1, "id": rng.choice([rng.randrange(10**6), f"f{rng.randrange(10**6)}", None, True, [1]]),
              "op": rng.choice(["matte", "matte", "matte", "reset", "status", "hello", "fly", None, 3])}
    image = {"shape": rng.choice(values), "dtype": rng.choice(["uint8", "float32", "half", None, 3]),
             "transport": rng.choice(values), "frame": rng.choice([1, 2, 0, -1, True, "1"]),
             "shm": rng.choice(values), "path": rng.choice(values)}
    for field in ("stream", "frame", "temporal", "keyframe_interval", "alpha_dtype", "max_pixels", "colourspace",
                  "alpha_shm_offset", "request", "v"):
        if rng.random() < 0.4:
            header[field] = rng.choice(values)
    if rng.random() < 0.8:
        header["image"] = image if rng.random() < 0.8 else rng.choice(values)
    if rng.random() < 0.3:
        header["prior"] = dict(image, shape=rng.choice([[2, 2, 1], [2, 2, 3], None]))
    payload = [bytes(rng.randrange(0, 400))] if rng.random() < 0.7 else []
    if kind == 1:
        header.pop("v")
    return [msgpack.packb(header, use_bin_type=True), *payload]


def test_a_fuzz_of_malformed_requests_gets_one_reply_each_and_no_traceback(runtime, tmp_path):
    address = f"ipc://{tmp_path}/fuzz.sock"
    pid = guided_engine(address, runtime)
    rng = random.Random(1234)
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(address)
    try:
        EngineClient(address).status()
        before = rss_kb(pid)
        for index in range(300):
            socket.send_multipart(_malformed(rng))
            assert socket.poll(30000), f"request {index}: no reply"
            reply = msgpack.unpackb(socket.recv_multipart()[0])
            assert isinstance(reply, dict) and "ok" in reply, reply
            if index % 50 == 0:
                assert EngineClient(address, timeout=5.0).status()["pid"] == pid
        assert socket.poll(500) == 0, "more than one reply to a request"
        after = rss_kb(pid)
    finally:
        socket.close()
        stop_engine(address, runtime)
    assert after - before < 100_000, f"RSS grew by {after - before} kB"  # 100 MB
    with open(_log(runtime, address)) as log:
        text = log.read()
    assert "Traceback" not in text, text[-3000:]


def test_memory_a_large_frame_took_is_given_back_once_the_engine_is_idle(runtime, tmp_path):
    address = f"ipc://{tmp_path}/rss.sock"
    pid = guided_engine(address, runtime, "--memory-budget", "0.001")  # no 4K state kept: only the frame's memory
    prior = np.full((8, 8), 0.5, np.float32)
    with EngineClient(address, timeout=60.0) as client:
        client.matte("small", 1, np.zeros((64, 96, 3), np.uint8), prior=prior)
        time.sleep(7)  # the warm-up's own memory given back too
        before = rss_kb(pid)
        client.matte("large", 1, np.random.default_rng(0).integers(0, 256, (2160, 3840, 3), np.uint8), prior=prior)
        during = rss_kb(pid)
        deadline = time.monotonic() + 20
        while rss_kb(pid) - before > 150_000 and time.monotonic() < deadline:
            time.sleep(0.5)
        after = rss_kb(pid)
    stop_engine(address, runtime)
    assert during - before > 500_000, f"the 4K frame took only {during - before} kB: the test shows nothing"
    assert after - before <= 150_000, f"{after - before} kB still held after the engine idled"


def test_streams_are_shared_by_name_across_clients(engine):
    """A stream is the name a host gives a sequence, whichever connection sends its frames (a farm
    task's second client, a reconnect): the second client's next frame continues the first's."""
    frame, prior = np.full((32, 48, 3), 0.5, np.float32), np.full((4, 6), 0.5, np.float32)
    with EngineClient(engine[0]) as first, EngineClient(engine[0]) as second:
        assert first.matte("shared-name", 1, frame, prior=prior)[1]["continued"] is False
        assert second.matte("shared-name", 2, frame, prior=prior)[1]["continued"] is True


def test_the_protocol_page_answers_every_question_of_its_checklist():
    """Each checklist entry names the parts of docs/PROTOCOL.md that answer it: they must exist."""
    from conftest import REPO

    page = (REPO / "docs" / "PROTOCOL.md").read_text()
    checklist = page[page.index("## Checklist for client writers"):]
    questions = [line for line in checklist.splitlines() if line.startswith("- ")]
    assert len(questions) == 10
    for question in questions:
        answer = question.split("? ", 1)[1]
        places = re.findall(r'"([^"]+)"', answer) or ["the `matte` request table"]
        for place in places:
            assert (f"## {place}" in page or f"**{place}.**" in page or f"**{place}**" in page
                    or place == "the `matte` request table" and "`alpha_shm_offset` | int" in page), (question, place)
