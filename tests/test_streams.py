"""The engine's stream store: temporal rules, eviction, and the memory total status reports."""
from __future__ import annotations

import torch

from sparsemat.engine.matting import MatteState
from sparsemat.engine.streams import StreamStore


def state(height: int, width: int) -> MatteState:
    return MatteState(torch.zeros(1, 3, height, width), torch.zeros(1, 1, height, width))


def held(store: StreamStore) -> int:
    return sum(store.find(name).nbytes for name in list(store._streams))  # noqa: SLF001


def test_the_memory_total_follows_records_evictions_and_resets():
    now = [0.0]
    store = StreamStore(budget_bytes=3 * 16 * 100, idle_timeout_s=60, clock=lambda: now[0])  # three 10 x 10 states
    for name in "abcd":
        store.record(name, 1, state(10, 10))
        assert store.memory_bytes == held(store)
    assert len(store) == 3 and store.find("a") is None  # over budget: the least recently used went
    assert store.reset("c") and not store.reset("c")
    assert store.memory_bytes == held(store) == 2 * 16 * 100
    store.record("b", 2, state(20, 20))  # alone over budget: the others go, it stays without its state
    assert len(store) == 1 and store.find("b").state is None and store.memory_bytes == held(store) == 0
    store.record("e", 1, state(10, 10))
    now[0] = 61.0
    store.record("f", 1, state(10, 10))  # b and e have idled out
    assert len(store) == 1 and store.memory_bytes == held(store) == 16 * 100


def test_reuse_only_for_the_next_frame_when_temporal_and_not_a_keyframe():
    store = StreamStore(budget_bytes=1 << 30, idle_timeout_s=60)
    stream = store.record("s", 7, state(4, 4))
    assert store.previous_state(stream, 8, temporal=True, keyframe_interval=0) is stream.state
    assert store.previous_state(stream, 9, temporal=True, keyframe_interval=0) is None
    assert store.previous_state(stream, 8, temporal=False, keyframe_interval=0) is None
    assert store.previous_state(stream, 8, temporal=True, keyframe_interval=4) is None


def test_alphas_in_memory_about_to_be_reused_are_copied_out_or_forgotten():
    store = StreamStore(budget_bytes=1 << 30, idle_timeout_s=60)
    slot = torch.rand(2, 4, 4)  # two clients' slots, as the engine maps them
    for name, index in (("a", 0), ("b", 1)):
        stream = store.record(name, 1, MatteState(torch.zeros(1, 3, 4, 4), slot[index][None, None]))
        stream.last_reply = (f"id-{name}", [], ("block", 0, "float32", stream.state.alpha[0, 0]))
    span = slot[0].data_ptr(), slot[0].data_ptr() + slot[0].nbytes
    store.before_slot_write(*span, "a")  # a's own next alpha goes there: it reads its state first
    assert store.find("a").state.alpha.data_ptr() == slot[0].data_ptr()
    kept = slot[0].clone()
    store.before_slot_write(*span, "b")  # b's alpha goes into a's slot: a keeps a copy, not its reply
    assert store.find("a").last_reply is None
    store.record("a", 2, MatteState(torch.zeros(1, 3, 4, 4), slot[0][None, None]))
    store.find("a").last_reply = ("id-a2", [], ("block", 0, "float32", store.find("a").state.alpha[0, 0]))
    store.release(*span, copy=True)  # unmapped: the state and the cached reply follow one copy
    slot[0] = -1.0
    a = store.find("a")
    assert torch.equal(a.state.alpha[0, 0], kept) and a.last_reply[2][3].data_ptr() == a.state.alpha.data_ptr()
    assert store.find("b").state.alpha.data_ptr() == slot[1].data_ptr()  # not in that memory: untouched
    store.release(slot[1].data_ptr(), slot[1].data_ptr() + slot[1].nbytes, copy=False)
    b = store.find("b")
    assert b.state is None and b.last_reply is None and store.memory_bytes == held(store)
