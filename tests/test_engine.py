"""The engine daemon against real processes on real ZeroMQ sockets."""
from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import shared_memory

import msgpack
import numpy as np
import pytest
import zmq

from conftest import assert_faithful, run_cli, scaled, start_engine, stop_engine, write_rgb
from sparsemat.plugin import protocol
from sparsemat.plugin.client import EngineClient, EngineError, EngineUnavailable, start_command


@pytest.fixture(scope="module")
def engine(runtime, seed1_checkpoint):
    address = f"ipc://{runtime}/engine.sock"
    pid = start_engine(address, seed1_checkpoint, runtime)
    yield address, pid
    stop_engine(address, runtime)


def frames_of(reference, count, size=(48, 64)):
    """Small distinct frames cut from the reference clip, as float32 sRGB."""
    clip = reference["frames"].astype(np.float32) / 255
    return [np.ascontiguousarray(clip[i % 3, 8 * (i // 3) % 64:][: size[0], : size[1]]) for i in range(count)]


@contextlib.contextmanager
def frame_in_shared_memory(frame, size=None, name=None):
    """A shared-memory block (``size`` bytes, default the frame's) holding ``frame`` from offset 0, as a
    client's block does; closed and unlinked afterwards."""
    block = shared_memory.SharedMemory(name=name, create=True, size=size or frame.nbytes)
    try:
        write_pixels(block, frame)
        yield block
    finally:
        block.close()
        block.unlink()


def write_pixels(block, pixels) -> None:
    """``pixels`` into ``block`` from offset 0, as a client writes a frame."""
    np.frombuffer(block.buf, dtype=pixels.dtype, count=pixels.size)[:] = pixels.reshape(-1)


def alpha_bytes(frame) -> int:
    """The size of a float32 alpha for ``frame``: room for one slot."""
    return frame.shape[0] * frame.shape[1] * 4


def slot_of(block, frame, offset: int) -> np.ndarray:
    """The float32 alpha of ``frame``'s size at ``offset`` in ``block``, as a flat writable view (dropped
    before the block closes, which cannot close while a view is held)."""
    return np.frombuffer(block.buf, dtype=np.float32, count=frame.shape[0] * frame.shape[1], offset=offset)


def shm_image(frame, block) -> dict:
    return {"shape": list(frame.shape), "dtype": "float32", "transport": "shm", "shm": block.name}


def raw_request(address, *frames, timeout_ms=120000, identity=None):
    """Send raw frames from a fresh DEALER (with routing id ``identity``, as a client that
    reconnects keeps it) and return the decoded reply header."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        socket.setsockopt(zmq.ROUTING_ID, identity)
    socket.connect(address)
    try:
        socket.send_multipart(list(frames))
        assert socket.poll(timeout_ms), "the engine did not answer"
        return msgpack.unpackb(socket.recv_multipart()[0])
    finally:
        socket.close()


# ---- fidelity through the daemon -----------------------------------------------------------------

@pytest.fixture(scope="module")
def png_clip(reference, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    for index, frame in enumerate(reference["frames"]):
        write_rgb(folder / f"f.{index:04d}.png", frame)
    return str(folder / "f.%04d.png")


@pytest.mark.parametrize("options, key", [(("--no-temporal",), "ref_image"), (("--temporal",), "ref_video"),
                                          (("--no-temporal", "--max-pixels", "44306"), "ref_cascade")],
                         ids=["image", "temporal", "cascade"])
def test_matte_through_the_engine_matches_the_references(engine, png_clip, reference, tmp_path, options, key):
    result = run_cli("matte", png_clip, tmp_path / "a.%04d.exr", "--engine", engine[0], "--quiet", *options)
    assert result.returncode == 0, result.stderr
    from sparsemat.engine.imageio import read_alpha

    alphas = [read_alpha(str(tmp_path / f"a.{i:04d}.exr")) for i in range(3)]
    if key == "ref_video":
        for index in range(3):
            assert_faithful(alphas[index], reference[key][index], f"temporal frame {index}")
    else:
        assert_faithful(alphas[0], reference[key], key)


def test_matte_through_the_engine_never_imports_torch(engine, png_clip, tmp_path):
    """The farm task's and a host-only install's path: with torch made unimportable, it still works."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from sparsemat.engine.cli import main\n"
            f"sys.exit(main(['matte', {png_clip!r}, {str(tmp_path / 'a.%04d.exr')!r}, '--engine', {engine[0]!r}, "
            "'--quiet']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == [f"a.{i:04d}.exr" for i in range(3)]


# ---- lifecycle ---------------------------------------------------------------------------------

def test_second_start_on_a_live_address_says_so(engine, runtime, seed1_checkpoint):
    result = run_cli("engine", "start", "--address", engine[0], "--checkpoint", seed1_checkpoint,
                     env={"XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 0
    assert f"already running at {engine[0]} (pid {engine[1]}, SparseMat (seed1.pth) on cpu)" in result.stdout


def test_status_reports_the_engine(engine, runtime):
    result = run_cli("engine", "status", "--address", engine[0], env={"XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 0
    for field in ("address", "pid", "uptime", "device", "model", "streams", "memory", "frames served"):
        assert field in result.stdout
    assert str(engine[1]) in result.stdout and "seed1.pth" in result.stdout


def test_hello_reports_protocol_model_device_and_limits(engine):
    hello = EngineClient(engine[0]).hello()
    assert hello["protocol"] == protocol.VERSION and hello["device"] == "cpu"
    assert hello["limits"]["max_header_bytes"] == protocol.MAX_HEADER_BYTES
    assert set(hello["limits"]["transports"]) == {"inline", "shm", "file"}


def test_start_failure_reports_the_reason(runtime, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    result = run_cli("engine", "start", "--address", f"ipc://{tmp_path}/x.sock", "--checkpoint", bad,
                     env={"XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 1 and "bad.pth cannot be read" in result.stderr


# ---- protocol errors: every bad request gets an error reply, and the engine stays up ------------

def header(**fields):
    return msgpack.packb({"v": 1, "id": 7, **fields})


def matte_header(shape=(8, 8, 3), dtype="float32", **fields):
    return header(op="matte", stream="s", frame=1, image={"shape": list(shape), "dtype": dtype, "transport": "inline",
                                                          "frame": 1}, **fields)


@pytest.mark.parametrize("frames, code", [
    ((b"\x93\xff garbage \x00",), "bad_message"),
    ((msgpack.packb([1, 2, 3]),), "bad_message"),
    ((matte_header(),), "bad_request"),  # truncated: the pixel frame is missing
    ((header(op="matte", stream="s", frame=1, pad="x" * 70000),), "too_large"),
    ((header(op="fly"),), "unknown_op"),
    ((msgpack.packb({"v": 99, "id": 7, "op": "hello"}),), "bad_version"),
    ((matte_header(), np.zeros(10, np.float32).tobytes()), "size_mismatch"),
    ((matte_header(), np.full((8, 8, 3), np.nan, np.float32).tobytes()), "bad_pixels"),
    ((matte_header(shape=(8, 8, 2)), np.zeros((8, 8, 2), np.float32).tobytes()), "bad_request"),
    ((header(op="matte", stream=5, frame=1),), "bad_request"),
], ids=["garbage", "not-a-map", "truncated", "header-too-large", "unknown-op", "bad-version", "size-mismatch",
        "nan-pixels", "two-channels", "stream-not-a-string"])
def test_bad_requests_get_error_replies_and_the_engine_survives(engine, frames, code):
    reply = raw_request(engine[0], *frames)
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert reply["error"]["message"] and "\n" not in reply["error"]["message"]
    assert EngineClient(engine[0]).status()["pid"] == engine[1]


@pytest.mark.parametrize("transport", ["inline", "shm"])
def test_client_raises_engine_errors_with_code(engine, transport):
    frame = np.zeros((16, 24, 3), np.float32)
    frame[5, 9, 1] = np.inf
    client = EngineClient(engine[0])
    streams = client.status()["streams"]
    with pytest.raises(EngineError, match=r"1 NaN/infinite pixel values \(first at x=9, y=5\)") as caught:
        client.matte(f"bad-{transport}", 1, frame, transport=transport)
    assert caught.value.code == "bad_pixels"
    frame[5, 9, 1] = 0.5
    prior = np.full((2, 3), 0.5, np.float32)
    prior[1, 2] = np.nan
    with pytest.raises(EngineError, match=r"prior has 1 NaN/infinite pixel values \(first at x=2, y=1\)") as caught:
        client.matte(f"bad-{transport}", 1, frame, transport=transport, prior=prior)
    assert caught.value.code == "bad_pixels"
    assert client.status()["streams"] == streams  # a failed request holds no state
    assert client.matte(f"bad-{transport}", 1, frame, transport=transport)[0].shape == (16, 24)
    assert client.status()["streams"] == streams + 1
    client.close()


def test_the_client_refuses_a_header_over_the_limit_before_sending(engine):
    """The engine cannot say to whom a header it will not read belongs: the client checks first."""
    client = EngineClient(engine[0], timeout=2.0, retries=0)
    with pytest.raises(ValueError, match="over the protocol's 65536-byte limit"):
        client.matte("s" * 70000, 1, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="alpha_dtype must be one of float16, float32, got 'float64'"):
        client.matte("s", 1, np.zeros((8, 8, 3), np.float32), transport="shm", alpha_dtype="float64")
    client.close()


def test_integer_and_three_dimensional_priors_are_read_as_images_are(engine, reference):
    """A uint8 prior is scaled to [0, 1] as a uint8 image is (it was clipped: 128 became 1.0)."""
    frame = frames_of(reference, 1)[0]
    eight_bit = np.random.default_rng(3).integers(0, 256, (6, 8), dtype=np.uint8)
    as_float = eight_bit.astype(np.float32) * np.float32(1 / 255)  # the engine's scaling
    client = EngineClient(engine[0])
    expected = client.matte("prior-float", 1, frame, prior=as_float)[0].copy()
    for transport in ("inline", "shm"):
        assert np.array_equal(client.matte("prior-u8", 1, frame, prior=eight_bit, transport=transport)[0], expected)
    assert np.array_equal(client.matte("prior-hw1", 1, frame, prior=as_float[..., None])[0], expected)
    with pytest.raises(ValueError, match="a prior must be"):
        client.matte("prior-rgb", 1, frame, prior=np.zeros((6, 8, 3), np.float32))
    client.close()


# ---- transports, retries, temporal rules ------------------------------------------------------------

def test_transports_give_the_same_alpha(engine, reference, tmp_path):
    frame = frames_of(reference, 1)[0]
    client = EngineClient(engine[0])
    inline, _ = client.matte("t-inline", 1, frame)
    shared, _ = client.matte("t-shm", 1, frame, transport="shm")
    eight_bit = np.round(frame * 255).astype(np.uint8)
    write_rgb(tmp_path / "f.png", eight_bit)
    from_file, _ = client.matte("t-file", 1, path=str(tmp_path / "f.png"))
    from_uint8, stats = client.matte("t-u8", 1, eight_bit, alpha_dtype="float16")
    half_inline, _ = client.matte("t-half", 1, frame, alpha_dtype="float16")
    half_shared, _ = client.matte("t-half-shm", 1, frame, transport="shm", alpha_dtype="float16")
    client.close()
    assert np.array_equal(inline, shared)
    assert half_shared.dtype == np.float16 and np.array_equal(half_inline, half_shared)
    assert np.array_equal(from_file, from_uint8.astype(np.float32)) or np.abs(from_file - from_uint8).max() < 1e-3
    assert from_uint8.dtype == np.float16 and set(stats["ms"]) >= {"read", "prior", "masks", "refine", "compose", "total"}


def test_a_prior_travels_as_the_image_does(engine, reference):
    """Through shm the prior goes in a block of its own (a full-resolution one is a third of the
    frame's bytes), with the same alpha as inline; closing the client removes both blocks."""
    frame = frames_of(reference, 1)[0]
    client = EngineClient(engine[0])
    prior = client.matte("prior-source", 1, frame)[0].copy()  # a full-resolution coarse alpha
    inline, _ = client.matte("prior-inline", 1, frame, prior=prior)
    before = set(os.listdir("/dev/shm"))
    shared, _ = client.matte("prior-shm", 1, frame, prior=prior, transport="shm")
    blocks = set(os.listdir("/dev/shm")) - before
    client.close()
    assert np.array_equal(inline, shared)
    assert len(blocks) == 2, blocks  # the frame's (with the alpha slots) and the prior's
    assert not blocks & set(os.listdir("/dev/shm"))


def test_a_retried_request_is_answered_from_cache(engine, reference):
    frame = frames_of(reference, 1)[0]
    served = EngineClient(engine[0]).status()["frames_served"]
    request = msgpack.packb({"v": 1, "id": "retry-1", "op": "matte", "stream": "r", "frame": 3,
                             "image": {"shape": list(frame.shape), "dtype": "float32", "transport": "inline"}})
    first = raw_request(engine[0], request, frame.tobytes(), identity=b"retrying-client")
    second = raw_request(engine[0], request, frame.tobytes(), identity=b"retrying-client")
    assert first == second and first["ok"]
    assert EngineClient(engine[0]).status()["frames_served"] == served + 1
    # The same id for another frame is not a retry (ids are the client's; the cache must not answer it).
    other = msgpack.packb({**msgpack.unpackb(request), "frame": 4})
    assert raw_request(engine[0], other, frame.tobytes(), identity=b"retrying-client")["frame"] == 4
    assert EngineClient(engine[0]).status()["frames_served"] == served + 2


def test_an_id_reused_by_another_client_never_gets_the_first_clients_alpha(engine, reference):
    """The retry cache is the client's own: another routing id with the same request id and stream
    (here asking for a float16 alpha of another frame size) is computed for it."""
    big, small = frames_of(reference, 1)[0], frames_of(reference, 1, size=(16, 24))[0]

    def request(frame, alpha_dtype):
        return msgpack.packb({"v": 1, "id": "shared-id", "op": "matte", "stream": "shared-stream", "frame": 1,
                              "alpha_dtype": alpha_dtype,
                              "image": {"shape": list(frame.shape), "dtype": "float32", "transport": "inline"}})

    assert raw_request(engine[0], request(big, "float32"), big.tobytes(), identity=b"first")["shape"] == [48, 64]
    reply = raw_request(engine[0], request(small, "float16"), small.tobytes(), identity=b"second")
    assert reply["shape"] == [16, 24] and reply["dtype"] == "float16"


def test_clients_made_one_after_another_never_share_request_ids(engine, reference):
    """A new client often reuses a freed one's address in memory: ids built from it made the engine
    answer frame 2 from frame 1's cache."""
    frames = frames_of(reference, 2)
    with EngineClient(engine[0]) as one_client:
        expected = [one_client.matte("ids-expected", n + 1, frames[n])[0].copy() for n in range(2)]
    for n in range(2):
        client = EngineClient(engine[0])
        alpha = client.matte("ids", n + 1, frames[n])[0].copy()
        client.close()
        del client
        gc.collect()
        assert np.array_equal(alpha, expected[n]), f"frame {n + 1}"


def test_a_retried_shared_memory_request_writes_its_alpha_again(engine, reference):
    """The client may have reused the slot since the lost reply: the cached answer rewrites the alpha."""
    frame = frames_of(reference, 1)[0]
    with frame_in_shared_memory(frame, frame.nbytes + alpha_bytes(frame)) as block:
        def slot():  # a fresh view each time: the block cannot close while one is held
            return slot_of(block, frame, frame.nbytes)
        request = header(op="matte", id="retry-shm", stream="r-shm", frame=1, alpha_shm_offset=frame.nbytes,
                         image=shm_image(frame, block))
        served = EngineClient(engine[0]).status()["frames_served"]
        assert raw_request(engine[0], request, timeout_ms=60000, identity=b"retry-shm")["alpha_in_shm"]
        alpha = slot().copy()
        slot()[:] = -1.0
        assert raw_request(engine[0], request, timeout_ms=60000, identity=b"retry-shm")["alpha_in_shm"]
        rewritten = slot().copy()  # not slot() inside the assert, whose values pytest keeps
        assert np.array_equal(rewritten, alpha) and alpha.min() >= 0.0
        assert EngineClient(engine[0]).status()["frames_served"] == served + 1


def test_a_stream_keeps_its_own_copy_of_an_alpha_written_into_shared_memory(engine, reference):
    """The slot is the client's again once the reply has arrived: the stream's next frame reuses
    the engine's own alpha, not whatever the slot holds by then."""
    frame = frames_of(reference, 1)[0]
    client = EngineClient(engine[0])
    expected = [client.matte("own-inline", number, frame)[0].copy() for number in (1, 2)]
    client.close()
    with frame_in_shared_memory(frame, frame.nbytes + alpha_bytes(frame)) as block:
        slot = slot_of(block, frame, frame.nbytes)
        replies = []
        for number in (1, 2):
            request = header(op="matte", id=f"own-{number}", stream="own-shm", frame=number,
                             alpha_shm_offset=frame.nbytes, image=shm_image(frame, block))
            replies.append(raw_request(engine[0], request, timeout_ms=60000))
            alpha = slot.reshape(frame.shape[:2]).copy()
            assert np.array_equal(alpha, expected[number - 1])
            slot[:] = -1.0
        del slot
    assert replies[1]["stats"]["reused"] and replies[1]["stats"]["temporal_pixels"] == 0


def test_streams_whose_alphas_take_turns_in_one_slot_keep_their_own(engine, reference):
    """Alphas dropped at once: every request of this client uses the same slot, which holds each
    stream's alpha in turn; each stream's next frame reuses its own."""
    frames = frames_of(reference, 2)
    with EngineClient(engine[0]) as inline:
        expected = [[inline.matte(f"turns-expected-{index}", n, frame)[0].copy() for n in (1, 2, 3)]
                    for index, frame in enumerate(frames)]
    assert not np.array_equal(expected[0][0], expected[1][0]), "the test needs distinct alphas"
    with EngineClient(engine[0]) as client:
        for n in (1, 2, 3):
            for index, frame in enumerate(frames):
                alpha, stats = client.matte(f"turns-{index}", n, frame, transport="shm")
                assert np.array_equal(alpha, expected[index][n - 1]), f"stream {index}, frame {n}"
                assert stats["reused"] == (n > 1)
                del alpha


def test_a_closed_block_is_unmapped_and_its_stream_goes_on(engine, reference):
    """A client that closes its block (or exits): the engine unmaps it (here, as it maps another
    client's new block), and the stream goes on from the engine's own state."""
    frame = frames_of(reference, 1)[0]
    with EngineClient(engine[0]) as inline:
        expected = [inline.matte("closed-expected", n, frame)[0].copy() for n in (1, 2)]
    with EngineClient(engine[0]) as first:
        first.matte("closed", 1, frame, transport="shm")
        name = first._blocks["image"].name  # noqa: SLF001
    with EngineClient(engine[0]) as second:
        alpha, stats = second.matte("closed", 2, frame, transport="shm")
        assert stats["reused"] and np.array_equal(alpha, expected[1])
        del alpha
    with open(f"/proc/{engine[1]}/maps") as maps:
        assert name not in maps.read()


def test_temporal_reuse_only_for_the_next_frame_and_off_on_keyframes(engine, reference):
    frames = frames_of(reference, 3)
    client = EngineClient(engine[0])
    reused = [client.matte("k", number, frame, keyframe_interval=5)[1]["reused"]
              for number, frame in zip((8, 9, 10), frames)]
    assert reused == [False, True, False]  # 10 is a keyframe
    assert client.matte("k", 12, frames[0])[1]["reused"] is False  # a jump starts over
    assert client.matte("k", 13, frames[1])[1]["reused"] is True
    assert client.reset("k") is True and client.matte("k", 14, frames[2])[1]["reused"] is False


# ---- concurrency and memory ---------------------------------------------------------------------------

def test_four_clients_at_once_equal_a_sequential_run(engine, reference):
    streams = {f"c{n}": frames_of(reference, 6, size=(40 + 8 * n, 56)) for n in range(4)}
    sequential = EngineClient(engine[0])
    expected = {name: [sequential.matte(f"seq-{name}", 100 + i, f)[0] for i, f in enumerate(frames)]
                for name, frames in streams.items()}
    results, errors = {}, []

    def run(name):
        try:
            client = EngineClient(engine[0])
            results[name] = [client.matte(name, 100 + i, f)[0] for i, f in enumerate(streams[name])]
            client.close()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    for name in streams:
        assert len(results[name]) == 6
        for got, want in zip(results[name], expected[name]):
            assert np.array_equal(got, want)


def test_one_client_shared_by_threads(engine, reference):
    frames = frames_of(reference, 3)
    client = EngineClient(engine[0])
    expected = [client.matte("shared-seq", 1, frame)[0] for frame in frames]
    results, errors = {}, []

    def run(index):
        try:
            results[index] = client.matte(f"shared-{index}", 1, frames[index])[0]
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and all(np.array_equal(results[i], expected[i]) for i in range(3))


def test_memory_budget_evicts_streams_instead_of_failing(runtime, seed1_checkpoint, reference, tmp_path, monkeypatch):
    address = f"ipc://{tmp_path}/small.sock"
    start_engine(address, seed1_checkpoint, runtime, "--memory-budget", "0.0001")  # 107 kB: two streams of 48 x 64 (49 kB each)
    try:
        client = EngineClient(address)
        frames = frames_of(reference, 2)
        for n in range(8):
            client.matte(f"m{n}", 1, frames[0])
        status = client.status()
        assert status["streams"] == 2 and status["memory_bytes"] <= status["memory_budget_bytes"]
        assert client.matte("m7", 2, frames[1])[1]["reused"] is True  # the newest stream survived
        assert client.matte("m0", 2, frames[1])[1]["reused"] is False  # the oldest was evicted
    finally:
        stop_engine(address, runtime)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    from sparsemat.engine.daemon import log_file

    with open(log_file(address)) as log:
        assert "stream 'm0' evicted: the engine's memory budget" in log.read()


# ---- failures of the engine process ----------------------------------------------------------------

def test_engine_killed_mid_request_is_reported_and_autostart_recovers(runtime, seed1_checkpoint, reference, tmp_path,
                                                                     monkeypatch):
    address = f"ipc://{tmp_path}/kill.sock"
    pid = start_engine(address, seed1_checkpoint, runtime)
    big = np.ascontiguousarray(np.tile(reference["frames"][0], (4, 4, 1)).astype(np.float32) / 255)  # 1024 x 1536
    client = EngineClient(address, timeout=3.0, heartbeat=0.5, retries=0)
    client.status()
    threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match="no answer from the SparseMat engine"):
        client.matte("big", 1, big)
    assert time.monotonic() - started < scaled(1.0 + 3.0 + 2.0)
    try:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        recovering = EngineClient(address, timeout=3.0, retries=1,
                                  autostart=start_command(str(seed1_checkpoint), device="cpu"))
        alpha, _ = recovering.matte("small", 1, frames_of(reference, 1)[0])
        assert alpha.shape == (48, 64)
        assert recovering.hello()["pid"] != pid
    finally:
        stop_engine(address, runtime)


def test_an_engine_restarted_under_a_waiting_client_gets_the_request_again(runtime, seed1_checkpoint, reference,
                                                                          tmp_path):
    """systemd restarts a crashed engine at once: the new engine answers the client's pings but never
    got its request. The client must notice, not wait for ever, and send the request again."""
    address = f"ipc://{tmp_path}/restart.sock"
    pid = start_engine(address, seed1_checkpoint, runtime)
    big = np.ascontiguousarray(np.tile(reference["frames"][0], (4, 4, 1)).astype(np.float32) / 255)
    client = EngineClient(address, timeout=20.0, heartbeat=0.5, retries=1)  # silence alone would take 20 s
    client.status()
    result = {}
    waiting = threading.Thread(target=lambda: result.update(alpha=client.matte("big", 1, big)[0].copy()))
    waiting.start()
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    try:
        start_engine(address, seed1_checkpoint, runtime)
        waiting.join(timeout=120)
        assert not waiting.is_alive(), "the client is still waiting on a request the new engine never got"
        fresh = EngineClient(address)
        assert np.array_equal(result["alpha"], fresh.matte("big-again", 1, big)[0])
        fresh.close()
    finally:
        client.close()
        stop_engine(address, runtime)


def test_a_retry_ignores_unknown_answers_to_the_pings_of_an_earlier_attempt(tmp_path):
    """What the real engine did in a CI run of the test above: the client's pings queued while no
    engine listened reach the new engine together; it answers the first "unknown", the client
    reconnects under its routing id and sends the request again, and the engine's answers to the
    rest of the old pings come to the new connection (ROUTER_HANDOVER gives it the routing id)
    before the reply. This stand-in sends one such answer, then the reply."""
    address = f"ipc://{tmp_path}/handover.sock"
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_HANDOVER, 1)
    router.bind(address)
    mattes, old_pings = [], []

    def serve():
        while router.poll(10_000):
            identity, *frames = router.recv_multipart()
            header = msgpack.unpackb(frames[0])
            if header["op"] == "matte":
                mattes.append(header["id"])
                if len(mattes) == 2:  # the retry: first the old connection's late answer, then the reply
                    router.send_multipart([identity, msgpack.packb(
                        {"id": old_pings[-1], "ok": True, "request": "unknown"})])
                    router.send_multipart([identity, msgpack.packb(
                        {"id": header["id"], "ok": True, "dtype": "float32", "shape": [2, 2], "stats": {}}),
                        np.full((2, 2), 0.25, np.float32).tobytes()])
                    return
            elif len(mattes) == 1:  # a ping of the first attempt
                old_pings.append(header["id"])
                if len(old_pings) == 2:
                    router.send_multipart([identity, msgpack.packb(
                        {"id": header["id"], "ok": True, "request": "unknown"})])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with EngineClient(address, timeout=10.0, heartbeat=0.05, retries=1) as client:
            alpha, _ = client.matte("s", 1, np.zeros((2, 2, 3), np.float32))
    finally:
        thread.join(timeout=20)
        router.close()
    assert len(mattes) == 2 and np.all(alpha == 0.25)


def test_pings_to_no_engine_never_block_the_client(tmp_path):
    """With no engine behind a socket file (one a killed engine left), pings queue in the socket; past
    its high-water mark a blocking send never returned."""
    (tmp_path / "nobody.sock").touch()
    client = EngineClient(f"ipc://{tmp_path}/nobody.sock", timeout=3.0, heartbeat=0.05, retries=0)
    outcome = {}

    def ask():
        try:
            client.status()
        except EngineUnavailable as exc:
            outcome["error"] = str(exc)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(timeout=30)
    assert not asking.is_alive(), "the client blocked"
    assert "no answer from the SparseMat engine" in outcome["error"]
    client.close()


def test_shutdown_while_draining_is_not_an_error(runtime, seed1_checkpoint, reference, tmp_path):
    address = f"ipc://{tmp_path}/drain.sock"
    start_engine(address, seed1_checkpoint, runtime)
    frame = np.ascontiguousarray(np.tile(reference["frames"][0], (2, 2, 1)).astype(np.float32) / 255)
    working = EngineClient(address, timeout=10.0)
    result = {}
    thread = threading.Thread(target=lambda: result.update(alpha=working.matte("d", 1, frame)[0].copy()))
    thread.start()
    time.sleep(0.5)
    stopper = EngineClient(address, retries=0)
    stopper.shutdown()
    stopper.shutdown()  # a second stop while the first frame finishes: answered, not "busy"
    stopper.close()
    thread.join(timeout=60)
    assert result["alpha"].shape == frame.shape[:2]
    assert stop_engine(address, runtime).returncode == 0


def test_idle_streams_and_closed_blocks_are_let_go_without_new_frames(runtime, seed1_checkpoint, reference, tmp_path):
    """An engine that goes quiet must free streams that idled out and the clients' closed shared-memory
    blocks (a mapping keeps a closed block's memory in use), not wait for the next frame to do it."""
    address = f"ipc://{tmp_path}/quiet.sock"
    pid = start_engine(address, seed1_checkpoint, runtime, "--stream-idle-timeout", "1")
    try:
        client = EngineClient(address)
        client.matte("quiet", 1, frames_of(reference, 1)[0], transport="shm")
        names = [block.name for block in client._blocks.values()]  # noqa: SLF001
        client.close()
        watcher = EngineClient(address)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with open(f"/proc/{pid}/maps") as maps:
                mapped = [name for name in names if name in maps.read()]
            if watcher.status()["streams"] == 0 and not mapped:
                break
            time.sleep(0.25)
        else:
            pytest.fail(f"after 15 s: {watcher.status()['streams']} stream(s) held, blocks still mapped: {mapped}")
        watcher.close()
    finally:
        stop_engine(address, runtime)


def test_stop_never_signals_a_process_a_stale_lock_file_names(runtime, tmp_path, monkeypatch):
    """A lock file outlives an engine that crashed; the pid in it may since belong to anything."""
    address = f"ipc://{tmp_path}/stale.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    from sparsemat.engine.daemon import lock_file

    bystander = subprocess.Popen(["sleep", "60"])
    try:
        with open(lock_file(address), "w") as handle:
            handle.write(str(bystander.pid))
        result = stop_engine(address, runtime)
        assert result.returncode == 0 and "no engine running" in result.stdout
        assert bystander.poll() is None, "stop signalled an unrelated process"
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize("arguments, message", [
    (("engine", "start", "--memory-budget", "0"), "expected a number over 0"),
    (("engine", "serve", "--stream-idle-timeout", "-1"), "expected a number over 0"),
    (("matte", "{plate}", "out.exr", "--engine", "localhost:5555"), "--engine: address must start with"),
])
def test_bad_engine_options_are_usage_errors(arguments, message, tmp_path):
    write_rgb(tmp_path / "plate.png", np.zeros((8, 8, 3), np.uint8))
    result = run_cli(*(argument.format(plate=tmp_path / "plate.png") for argument in arguments))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_finishes_the_request_in_flight(runtime, seed1_checkpoint, reference, tmp_path):
    address = f"ipc://{tmp_path}/term.sock"
    pid = start_engine(address, seed1_checkpoint, runtime)
    client = EngineClient(address, timeout=10.0)
    client.status()
    threading.Timer(0.5, os.kill, (pid, signal.SIGTERM)).start()
    frame = np.ascontiguousarray(np.tile(reference["frames"][0], (2, 2, 1)).astype(np.float32) / 255)
    alpha, _ = client.matte("t", 1, frame)
    assert alpha.shape == frame.shape[:2]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the engine did not exit after SIGTERM")


def test_exit_when_idle_stops_an_engine_nobody_uses(runtime, seed1_checkpoint, reference, tmp_path, monkeypatch):
    address = f"ipc://{tmp_path}/idle.sock"
    pid = start_engine(address, seed1_checkpoint, runtime, "--exit-when-idle", "3")
    client = EngineClient(address, timeout=2.0, retries=0)
    frame = frames_of(reference, 1)[0]
    for index in range(4):  # work every 1.5 s, for longer than the limit in all: it stays up
        client.matte("idle", index, frame)
        time.sleep(1.5)
    last_work = time.monotonic()
    statuses = 0
    while time.monotonic() - last_work < scaled(30):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        try:
            client.status()  # monitoring is not work: it must not keep the engine alive
            statuses += 1
        except EngineUnavailable:
            pass
        time.sleep(0.5)
    else:
        pytest.fail("the engine was still running 30 s after its last request")
    client.close()
    idle = time.monotonic() - last_work
    assert 3.0 <= idle < scaled(15.0) and statuses >= 3, f"exited after {idle:.1f} s idle, {statuses} statuses answered"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    from sparsemat.engine.daemon import lock_holder

    assert not os.path.exists(f"{tmp_path}/idle.sock"), "an engine that exits on its own leaves no socket behind"
    assert lock_holder(address) is None


def test_a_shared_memory_name_reused_for_a_new_block_is_read_afresh(engine, reference):
    first, second = frames_of(reference, 2)
    client = EngineClient(engine[0])
    expected = client.matte("shm-expected", 1, second)[0]
    name = f"sparsemat-test-{os.getpid()}"
    for index, frame in enumerate((first, second)):
        with frame_in_shared_memory(frame, name=name) as block:
            request = msgpack.packb({"v": 1, "id": f"shm-{index}", "op": "matte", "stream": f"shm-{index}", "frame": 1,
                                     "image": shm_image(frame, block)})
            socket = zmq.Context.instance().socket(zmq.DEALER)
            socket.connect(engine[0])
            socket.send(request)
            assert socket.poll(60000)
            header, alpha = socket.recv_multipart()
            socket.close(linger=0)
    assert msgpack.unpackb(header)["ok"]
    assert np.array_equal(np.frombuffer(alpha, dtype=np.float32).reshape(expected.shape), expected)


SMALL_SHM_CLIENT = """
import json, subprocess, sys, time
import numpy as np
from sparsemat.plugin.client import EngineClient
address, checkpoint = sys.argv[1], sys.argv[2]
engine = subprocess.Popen(["sparsemat", "engine", "serve", "--address", address, "--checkpoint", checkpoint,
                           "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    client = EngineClient(address, timeout=60)
    frame = np.random.default_rng(0).random((512, 512, 3), dtype=np.float32)  # 3 MiB: more than /dev/shm holds
    small = np.ascontiguousarray(frame[:48, :64])
    results = {}
    for name, pixels in (("small", small), ("large", frame)):
        inline = client.matte(name + "-inline", 1, pixels)[0]
        shared = client.matte(name + "-shm", 1, pixels, transport="shm")[0]
        results[name] = bool(np.array_equal(inline, shared))
    client.shutdown()
    client.close()
    print(json.dumps(results))
finally:
    engine.wait(timeout=60)
"""


def test_a_full_dev_shm_falls_back_to_inline_instead_of_crashing(seed1_checkpoint, tmp_path):
    """Writing past a full /dev/shm is a SIGBUS that would take the host (Nuke) down with it; a container's
    /dev/shm is often 64 MiB, less than one 4K float frame. Run in a private mount namespace with 2 MiB."""
    mount = "mount -t tmpfs -o size=2m tmpfs /dev/shm"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"{mount} && echo ok"], capture_output=True, text=True)
    if probe.stdout.strip() != "ok":
        pytest.skip(f"cannot mount a small /dev/shm here (needs root and unshare): {probe.stderr.strip()}")
    script = tmp_path / "client.py"
    script.write_text(SMALL_SHM_CLIENT)
    address = f"ipc://{tmp_path}/engine.sock"
    try:
        result = subprocess.run(["unshare", "-m", "sh", "-c", f'{mount} && exec "$0" "$@"', sys.executable,
                                 str(script), address, str(seed1_checkpoint)], capture_output=True, text=True,
                                timeout=300, env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)})
    finally:  # a client that crashed leaves its engine behind
        stop_engine(address, tmp_path)
    assert result.returncode == 0, f"client exited {result.returncode}: {result.stderr[-2000:]}"
    assert json.loads(result.stdout.splitlines()[-1]) == {"small": True, "large": True}
    assert "sending image pixels this large inline" in result.stderr


def test_a_shared_memory_block_shrunk_after_use_is_refused_not_a_crash(engine, reference):
    """A block the engine has mapped and the client then shrinks: reading the old mapping past the new
    end would be a SIGBUS in the engine."""
    frame = frames_of(reference, 1)[0]
    with frame_in_shared_memory(frame) as block:
        image = shm_image(frame, block)
        first = raw_request(engine[0], header(op="matte", id=71, stream="shrunk", frame=1, image=image), timeout_ms=60000)
        assert first["ok"], first
        os.truncate(os.path.join("/dev/shm", block.name.lstrip("/")), frame.nbytes // 2)
        second = raw_request(engine[0], header(op="matte", id=72, stream="shrunk", frame=2, image=image), timeout_ms=60000)
        assert second["ok"] is False and second["error"]["code"] == "size_mismatch", second
        assert EngineClient(engine[0]).status()["pid"] == engine[1]


@pytest.mark.parametrize("next_frame", ["same block", "inline"])
def test_a_block_shrunk_after_its_alpha_was_written_costs_the_stream_nothing(engine, reference, next_frame):
    """The engine keeps no state in a client's block: one shrunk under the slot its alpha went to
    (reading there would be a SIGBUS) leaves the stream's next frame reusing the engine's own."""
    frame = frames_of(reference, 1)[0]
    with frame_in_shared_memory(frame, frame.nbytes + alpha_bytes(frame)) as block:
        first = raw_request(engine[0], header(op="matte", id=f"cut-1-{next_frame}", stream=f"cut-{next_frame}", frame=1,
                                              image=shm_image(frame, block), alpha_shm_offset=frame.nbytes),
                            timeout_ms=60000)
        assert first["ok"], first
        os.truncate(os.path.join("/dev/shm", block.name.lstrip("/")), frame.nbytes)
        if next_frame == "inline":
            second = raw_request(engine[0], header(op="matte", id="cut-2", stream=f"cut-{next_frame}", frame=2,
                                                   image={"shape": list(frame.shape), "dtype": "float32",
                                                          "transport": "inline"}), frame.tobytes(), timeout_ms=60000)
        else:
            second = raw_request(engine[0], header(op="matte", id="cut-2s", stream=f"cut-{next_frame}", frame=2,
                                                   image=shm_image(frame, block)), timeout_ms=60000)
        assert second["ok"] and second["stats"]["reused"], second
        assert EngineClient(engine[0]).status()["pid"] == engine[1]


def test_pixels_written_over_an_old_slot_leave_the_stream_state_intact(engine, reference):
    """A foreign client that lays its block out anew (RGB, then RGBA at the same size: the pixels grow
    over the old alpha slot) changes nothing the engine keeps: the stream reuses its own alpha."""
    frame = frames_of(reference, 1)[0]
    rgba = np.ascontiguousarray(np.concatenate([frame, np.ones_like(frame[..., :1])], axis=-1))
    with frame_in_shared_memory(frame, rgba.nbytes + alpha_bytes(frame)) as block:
        first = raw_request(engine[0], header(op="matte", id="layout-1", stream="layout", frame=1,
                                              image=shm_image(frame, block), alpha_shm_offset=frame.nbytes),
                            timeout_ms=60000)
        alpha = slot_of(block, frame, frame.nbytes).copy()
        write_pixels(block, rgba)
        second = raw_request(engine[0], header(op="matte", id="layout-2", stream="layout", frame=2,
                                               image={**shm_image(rgba, block)},
                                               alpha_shm_offset=rgba.nbytes), timeout_ms=60000)
        again = slot_of(block, frame, rgba.nbytes).copy()
    assert first["ok"] and second["ok"] and second["stats"]["reused"], second
    assert np.array_equal(again, alpha)  # the same RGB: nothing changed


def test_a_retry_after_its_block_was_unmapped_is_still_answered_from_cache(engine, reference):
    """The engine keeps 16 blocks mapped: a client that lost a reply may retry after its block was
    unmapped; the cached answer writes its alpha into the block again."""
    frames = frames_of(reference, 17)
    with contextlib.ExitStack() as blocks:
        mine = blocks.enter_context(
            frame_in_shared_memory(frames[0], frames[0].nbytes + alpha_bytes(frames[0])))
        request = header(op="matte", id="lost-reply", stream="lost", frame=1,
                         image=shm_image(frames[0], mine), alpha_shm_offset=frames[0].nbytes)
        assert raw_request(engine[0], request, timeout_ms=60000, identity=b"lost-reply")["ok"]
        alpha = slot_of(mine, frames[0], frames[0].nbytes).copy()
        for index, frame in enumerate(frames[1:]):  # 16 other blocks push it out of the engine's mappings
            other = blocks.enter_context(frame_in_shared_memory(frame))
            assert raw_request(engine[0], header(op="matte", id=f"push-{index}", stream=f"push-{index}", frame=1,
                                                 image=shm_image(frame, other)), timeout_ms=60000)["ok"]
        served = EngineClient(engine[0]).status()["frames_served"]
        slot_of(mine, frames[0], frames[0].nbytes)[:] = -1.0
        assert raw_request(engine[0], request, timeout_ms=60000, identity=b"lost-reply")["ok"]
        retried = slot_of(mine, frames[0], frames[0].nbytes).copy()
    assert EngineClient(engine[0]).status()["frames_served"] == served  # from the cache, not computed again
    assert np.array_equal(retried, alpha)


def test_one_block_under_two_spellings_of_its_name_is_one_mapping(engine, reference):
    """"/name" and "name" are the same block: the engine maps it once (each mapping of a frame-sized
    block is memory the engine holds until it lets go of it)."""
    frame = frames_of(reference, 1)[0]
    with frame_in_shared_memory(frame, frame.nbytes + alpha_bytes(frame)) as block:
        name = block.name.lstrip("/")
        for index, spelling in enumerate((name, "/" + name)):
            request = header(op="matte", id=f"spelling-{index}", stream="spelling", frame=index + 1,
                             image={**shm_image(frame, block), "shm": spelling}, alpha_shm_offset=frame.nbytes)
            assert raw_request(engine[0], request, timeout_ms=60000)["ok"]
        with open(f"/proc/{engine[1]}/maps") as maps:
            assert sum(name in line for line in maps) == 1


def test_a_block_without_room_for_the_alpha_is_refused_before_the_frame_is_computed(engine, reference):
    frame = frames_of(reference, 1)[0]
    with frame_in_shared_memory(frame, frame.nbytes + 64) as block:  # a float32 alpha needs a third more
        served = EngineClient(engine[0]).status()["frames_served"]
        request = header(op="matte", id=73, stream="no-room", frame=1, image=shm_image(frame, block),
                         alpha_shm_offset=frame.nbytes)
        reply = raw_request(engine[0], request, timeout_ms=60000)
        assert reply["ok"] is False and reply["error"]["code"] == "size_mismatch", reply
        assert EngineClient(engine[0]).status()["frames_served"] == served


def test_shared_memory_alphas_are_views_that_are_never_overwritten_while_held(engine, reference):
    """Alphas through shared memory are lent views of the client's block, not copies: a slot is reused
    only once nothing refers to its alpha, or to anything made from it."""
    frames = frames_of(reference, 6)
    client = EngineClient(engine[0])
    expected = [client.matte(f"lend-{index}", 1, frame)[0].copy() for index, frame in enumerate(frames)]
    assert len({e.tobytes() for e in expected}) == len(frames), "the test needs distinct alphas"

    def shared(index):
        return client.matte(f"lend-shm-{index}", 1, frames[index], transport="shm")[0]

    first, second = shared(0), shared(1)  # both slots lent
    third = shared(2)  # no free slot: this one comes inline
    rows = first[5:20]  # a view of the first alpha keeps its slot
    del first
    fourth = shared(3)  # reuses no held slot
    del second
    fifth, sixth = shared(4), shared(5)
    for got, index in ((rows, 0), (third, 2), (fourth, 3), (fifth, 4), (sixth, 5)):
        want = expected[index][5:20] if index == 0 else expected[index]
        assert np.array_equal(got, want), f"alpha {index} changed while it was held"
    client.close()  # the block is unlinked; what the caller holds stays valid
    assert np.array_equal(sixth, expected[5]) and np.array_equal(rows, expected[0][5:20])


@pytest.mark.parametrize("transport", ["inline", "shm"])
def test_rgba_and_integer_pixels_give_the_rgb_float_alpha(engine, reference, transport):
    """Float32 RGBA is read in place through a strided view (the alpha channel ignored); integers are converted."""
    frame = frames_of(reference, 1)[0]
    client = EngineClient(engine[0])
    expected = client.matte(f"rgb-{transport}", 1, frame)[0].copy()
    rgba = np.ascontiguousarray(np.concatenate([frame, np.full(frame.shape[:2] + (1,), 0.25, np.float32)], axis=2))
    assert np.array_equal(client.matte(f"rgba-{transport}", 1, rgba, transport=transport)[0], expected)
    sixteen = np.round(frame * 65535).astype(np.uint16)
    assert np.abs(client.matte(f"u16-{transport}", 1, sixteen, transport=transport)[0] - expected).max() < 1e-3
    client.close()
