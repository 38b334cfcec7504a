"""The engine's stream store: temporal rules, eviction, and the memory total status reports."""
from __future__ import annotations

import torch

from sparsemat.engine.matting import MatteState
from sparsemat.engine.streams import StreamStore

STATE_10X10 = 1600  # float32: a 3 x 10 x 10 frame (1200 bytes) and a 10 x 10 alpha (400 bytes)


def state(height: int, width: int) -> MatteState:
    return MatteState(torch.zeros(1, 3, height, width), torch.zeros(1, 1, height, width))


def test_the_memory_total_follows_records_evictions_and_resets():
    now = [0.0]
    store = StreamStore(budget_bytes=3 * STATE_10X10, idle_timeout_s=60, clock=lambda: now[0])
    for count, name in enumerate("abcd", start=1):
        store.record(name, 1, state(10, 10))
        assert store.memory_bytes == min(count, 3) * STATE_10X10
    assert len(store) == 3 and store.find("a") is None  # over budget: the least recently used went
    assert store.reset("c") and not store.reset("c")
    assert store.memory_bytes == 2 * STATE_10X10
    store.record("b", 2, state(20, 20))  # alone over budget (6400 bytes): the others go, it stays without its state
    assert len(store) == 1 and store.find("b").state is None and store.memory_bytes == 0
    store.record("e", 1, state(10, 10))
    assert store.memory_bytes == STATE_10X10
    now[0] = 61.0
    store.record("f", 1, state(10, 10))  # b and e have idled out
    assert len(store) == 1 and store.memory_bytes == STATE_10X10


def test_reuse_only_for_the_next_frame_when_temporal_and_not_a_keyframe():
    store = StreamStore(budget_bytes=1 << 30, idle_timeout_s=60)
    stream = store.record("s", 7, state(4, 4))
    assert store.previous_state(stream, 8, temporal=True, keyframe_interval=0) is stream.state
    assert store.previous_state(stream, 9, temporal=True, keyframe_interval=0) is None
    assert store.previous_state(stream, 7, temporal=True, keyframe_interval=0) is None
    assert store.previous_state(stream, 8, temporal=False, keyframe_interval=0) is None
    assert store.previous_state(stream, 8, temporal=True, keyframe_interval=4) is None
    assert store.previous_state(None, 8, temporal=True, keyframe_interval=0) is None
