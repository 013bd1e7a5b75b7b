"""The core: batching, dispatch, per-batch bookkeeping and routing, driven through the bindings
with the test playing the workers and the frontends.

The test holds the worker's and the frontend's ends of real channels (WorkerChannel,
FrontendChannel), so every batch and reply it sees went through the same path a worker or
frontend process reads.
"""

from __future__ import annotations

import json
import os
import select
import time

import pytest

from pyserve import _core, frames

from helpers import RingWorker, channel_fds, core_under_test, loaded_worker, results_in, take_from

LONG = 10_000  # ms: a max_batch_delay that never runs out within a test
ANSWERS = dict(died_twice=(500, "died twice"), timed_out_answer=(500, "timed out"), lost=(500, "lost"))


@pytest.fixture
def core():
    with core_under_test() as core:
        yield core


def submit(core, *ids: int, model_id: int = 1, worker: int = 0) -> None:
    for id in ids:
        payload = frames.encode_request(id, str(id), "", [], b"x")
        assert core.submit(model_id, id, payload, worker) == _core.SUBMIT_QUEUED


def exited(core, worker_id: int, timed_out: bool = False) -> tuple[int, int, int]:
    """(failed, timed out, requeued) of worker_exited."""
    return core.worker_exited(worker_id, timed_out, **ANSWERS)[:3]


def answers(core, count: int) -> list:
    """The next `count` results that reach this process, unpacked."""
    replies, _ = take_from(core, lambda replies, events: len(results_in(replies)) >= count)
    return results_in(replies)


def body(result) -> bytes:
    return result[5]


# -- batching ---------------------------------------------------------------------------

def test_a_request_goes_out_at_once_when_a_worker_is_idle(core):
    core.add_model(1, batch_size=8, max_batch_delay=LONG, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    assert worker.next_batch()[1] == [1]


def test_requests_wait_for_a_worker_that_is_still_loading(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = RingWorker(core, 1)
    submit(core, 1)
    assert worker.next_batch(timeout=0.2) is None
    worker.load()
    assert worker.next_batch()[1] == [1]


def test_while_workers_are_busy_a_batch_leaves_when_batch_size_is_reached(core):
    core.add_model(1, batch_size=3, max_batch_delay=LONG, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    assert worker.next_batch()[1] == [1]  # the worker is now busy with it
    submit(core, 2, 3)
    assert worker.next_batch(timeout=0.3) is None
    submit(core, 4)
    assert worker.next_batch()[1] == [2, 3, 4]


def test_while_workers_are_busy_a_batch_leaves_after_max_batch_delay(core):
    core.add_model(1, batch_size=8, max_batch_delay=200, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    worker.next_batch()
    started = time.monotonic()
    submit(core, 2, 3)
    assert worker.next_batch(timeout=10)[1] == [2, 3]
    assert time.monotonic() - started >= 0.2


def test_a_shorter_max_batch_delay_set_later_wakes_the_core_earlier(core):
    core.add_model(1, batch_size=8, max_batch_delay=LONG, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    worker.next_batch()
    submit(core, 2)
    core.set_policy(1, batch_size=8, max_batch_delay=50, max_queue_size=100)
    assert worker.next_batch(timeout=5)[1] == [2]


def test_a_freed_worker_takes_what_queued_meanwhile(core):
    core.add_model(1, batch_size=4, max_batch_delay=LONG, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    batch_id, ids = worker.next_batch()
    submit(core, 2, 3)
    worker.answer(batch_id, ids)  # idle again: what waits leaves without the delay
    assert worker.next_batch()[1] == [2, 3]


def test_a_worker_holds_at_most_two_batches(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1, 2, 3, 4)
    assert worker.next_batch()[1] == [1]
    assert worker.next_batch()[1] == [2]
    assert worker.next_batch(timeout=0.3) is None
    assert core.queued(1) == 2


def test_batches_go_to_the_worker_with_fewest_in_flight(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    first, second = loaded_worker(core, 1), loaded_worker(core, 2)
    submit(core, 1, 2)
    assert {first.next_batch()[1][0], second.next_batch()[1][0]} == {1, 2}
    assert core.in_flight(1) == core.in_flight(2) == 1


def test_batches_carry_each_request_byte_for_byte(core):
    core.add_model(1, batch_size=2, max_batch_delay=LONG, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    worker.next_batch()
    payloads = [frames.encode_request(n, f"r{n}", "text/plain", [[b"a", b"b"]], bytes(range(n)))
                for n in (2, 3)]
    for n, payload in zip((2, 3), payloads):
        core.submit(1, n, payload)
    frame = worker.channel.receive(timeout=5)
    assert frame.endswith(b"".join(payloads))


def test_each_model_has_its_own_queue_and_workers(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    core.add_model(2, batch_size=1, max_batch_delay=0, max_queue_size=100)
    first, second = loaded_worker(core, 1, model_id=1), loaded_worker(core, 2, model_id=2)
    submit(core, 10, model_id=2)
    submit(core, 20, model_id=1)
    assert second.next_batch()[1] == [10]
    assert first.next_batch()[1] == [20]


def test_the_core_counts_batch_sizes_and_queue_depths(core):
    core.add_model(1, batch_size=2, max_batch_delay=LONG, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)  # alone: batch of 1, nothing queued before it
    worker.next_batch()
    submit(core, 2, 3)  # the second finds one queued; they leave as a batch of 2
    worker.next_batch()
    (batch_counts, batch_sum), (depth_counts, depth_sum) = core.stats(1)
    assert (batch_counts[1], batch_counts[2], batch_sum) == (1, 1, 3)  # sizes 1 and 2
    assert (depth_counts[0], depth_counts[1], depth_sum) == (2, 1, 1)  # depths 0, 0 and 1


# -- answers ----------------------------------------------------------------------------

def test_answers_reach_python_through_the_notify_fd(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 7)
    batch_id, ids = worker.next_batch()
    worker.answer(batch_id, ids)
    (result,) = answers(core, 1)
    assert result[0] == 7 and body(result) == b"ok"
    assert core.in_flight(1) == 0


def test_a_reply_carries_when_the_worker_started_the_batch(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 7)
    batch_id, ids = worker.next_batch()
    worker.channel.send(frames.encode_results(batch_id, True, [[7, 200, "", None, [], b"ok"]], [], 12345))
    replies, _ = take_from(core, lambda replies, events: replies)
    assert replies[0][:2] == [frames.REPLY, 12345]


def test_a_result_for_a_request_outside_the_batch_is_refused(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    batch_id, _ = worker.next_batch()
    worker.answer(batch_id, [1, 99])  # 99 belongs to no batch of this worker
    replies, events = take_from(core, lambda replies, events: events)
    assert events[0][:2] == (1, frames.BROKEN)
    assert b"99" in events[0][2]
    assert not results_in(replies)  # the frame is refused whole: request 1's result is not sent


def test_a_result_for_a_batch_the_worker_does_not_hold_is_refused(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    batch_id, _ = worker.next_batch()
    worker.answer(batch_id + 1, [1])
    _, events = take_from(core, lambda replies, events: events)
    assert events[0][:2] == (1, frames.BROKEN)


def test_a_second_final_answer_to_one_request_is_refused(core):
    core.add_model(1, batch_size=2, max_batch_delay=LONG, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    batch_id, _ = worker.next_batch()
    worker.answer(batch_id, [1], done=False)
    assert answers(core, 1)[0][0] == 1
    worker.answer(batch_id, [1])
    _, events = take_from(core, lambda replies, events: events)
    assert events[0][:2] == (1, frames.BROKEN)


def test_requests_a_finished_batch_left_unanswered_get_an_error_at_once(core):
    core.add_model(1, batch_size=3, max_batch_delay=LONG, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    worker.next_batch()
    submit(core, 2, 3, 4)
    batch_id, ids = worker.next_batch()
    assert ids == [2, 3, 4]
    worker.answer(batch_id, [3])  # done, but 2 and 4 left out
    got = {result[0]: result for result in answers(core, 3)}
    assert body(got[3]) == b"ok"
    for left_out in (2, 4):
        assert got[left_out][1] == 500
        assert "without answering it" in json.loads(body(got[left_out]))["message"]


def test_parts_of_a_streamed_answer_are_routed_before_the_last_one(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    batch_id, _ = worker.next_batch()
    parts = [[1, 200, "", None, [], f"part {n}".encode(), True] for n in range(3)]
    worker.channel.send(frames.encode_results(batch_id, False, parts))
    assert [body(r) for r in answers(core, 3)] == [b"part 0", b"part 1", b"part 2"]
    assert core.in_flight(1) == 1  # still answering
    worker.answer(batch_id, [1])
    assert answers(core, 1)[0][5] == b"ok"
    assert core.in_flight(1) == 0


# -- cancelling -------------------------------------------------------------------------

def test_a_cancelled_queued_request_never_runs(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1, 2, 3)  # 1 and 2 go to the worker, 3 waits
    assert core.cancel(1, 3) == _core.CANCEL_REMOVED
    assert core.queued(1) == 0
    for _ in range(2):
        batch_id, ids = worker.next_batch()
        assert ids != [3]
        worker.answer(batch_id, ids)
    assert worker.next_batch(timeout=0.3) is None


def test_the_answer_of_a_cancelled_running_request_is_dropped(core):
    core.add_model(1, batch_size=2, max_batch_delay=LONG, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    batch_id, ids = worker.next_batch()
    assert core.cancel(1, 1) == _core.CANCEL_RUNNING
    worker.answer(batch_id, ids)
    submit(core, 2)
    batch_id, ids = worker.next_batch()
    worker.answer(batch_id, ids)
    assert [result[0] for result in answers(core, 1)] == [2]


def test_a_cancelled_request_already_sent_is_withdrawn_from_its_worker(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1, 2)  # both go to the worker: 2 waits in its ring behind 1
    assert core.cancel(1, 2) == _core.CANCEL_RUNNING
    assert [worker.next_batch()[1], worker.next_batch()[1]] == [[1], [2]]
    assert worker.next_batch(timeout=0.3) is None  # the withdraw frame comes behind its batch
    assert worker.withdrawn == [2]


def test_a_withdrawn_request_its_worker_left_out_counts_as_withdrawn_not_answered(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1, 2)
    core.cancel(1, 2)
    for batch_id, ids in (worker.next_batch(), worker.next_batch()):
        worker.answer(batch_id, [id for id in ids if id != 2])
    assert [result[0] for result in answers(core, 1)] == [1]
    assert core.withdrawn(1) == (1, 1, 0, 0)


def test_a_withdrawn_request_that_ran_anyway_counts_as_a_dropped_answer(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    batch_id, ids = worker.next_batch()
    core.cancel(1, 1)
    worker.answer(batch_id, ids)
    submit(core, 2)
    batch_id, ids = worker.next_batch()
    worker.answer(batch_id, ids)
    assert [result[0] for result in answers(core, 1)] == [2]
    assert core.withdrawn(1) == (1, 0, 0, 1)


def test_the_wait_of_the_oldest_queued_request_is_measured(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    assert core.oldest_queued_seconds(1) == 0.0
    submit(core, 1, 2, 3)  # 1 and 2 go to the worker, 3 waits
    time.sleep(0.2)
    assert core.oldest_queued_seconds(1) >= 0.2
    for _ in range(3):
        batch_id, ids = worker.next_batch()
        worker.answer(batch_id, ids)
    assert core.oldest_queued_seconds(1) == 0.0


def test_cancelling_an_unknown_request_says_so(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    assert core.cancel(1, 42) == _core.CANCEL_UNKNOWN
    assert core.cancel(99, 42) == _core.CANCEL_UNKNOWN


# -- pinned requests --------------------------------------------------------------------

def test_a_pinned_request_runs_only_on_its_worker(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    first, second = loaded_worker(core, 1), loaded_worker(core, 2)
    for id in (1, 2, 3):
        submit(core, id, worker=2)
    got = []
    while len(got) < 3:
        batch_id, ids = second.next_batch()
        got += ids
        second.answer(batch_id, ids)
    assert got == [1, 2, 3]
    assert first.next_batch(timeout=0.2) is None


def test_a_request_pinned_to_a_worker_the_model_lacks_is_refused(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    loaded_worker(core, 1)
    payload = frames.encode_request(1, "1", "", [], b"x")
    assert core.submit(1, 1, payload, 7) == _core.SUBMIT_UNKNOWN_WORKER


def test_requests_pinned_to_a_worker_that_died_are_answered_lost(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    loaded_worker(core, 1)
    submit(core, 1, 2, 3, worker=1)  # 1 and 2 sent to it, 3 waits for it
    assert exited(core, 1) == (3, 0, 0)
    assert sorted(body(result) for result in answers(core, 3)) == [b"lost"] * 3


# -- workers dying ----------------------------------------------------------------------

def test_requests_of_a_dead_worker_are_retried_once_on_another(core):
    core.add_model(1, batch_size=2, max_batch_delay=0, max_queue_size=100)
    dying, survivor = loaded_worker(core, 1), loaded_worker(core, 2)
    submit(core, 1)
    holder = dying if dying.next_batch(timeout=1) else survivor
    other = survivor if holder is dying else dying
    assert exited(core, holder.id) == (0, 0, 1)  # nothing failed: it is retried
    assert other.next_batch()[1] == [1]


def test_a_request_whose_workers_die_twice_is_failed_not_retried_again(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    first = loaded_worker(core, 1)
    submit(core, 1)
    first.next_batch()
    assert exited(core, 1) == (0, 0, 1)
    second = loaded_worker(core, 2)
    assert second.next_batch()[1] == [1]
    assert exited(core, 2) == (1, 0, 0)
    assert core.queued(1) == 0
    assert body(answers(core, 1)[0]) == b"died twice"


def test_only_the_running_batch_is_blamed_for_a_death(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    loaded_worker(core, 1)
    submit(core, 1, 2)  # 1 runs, 2 waits behind it in the ring
    assert exited(core, 1) == (0, 0, 2)
    worker = loaded_worker(core, 2)
    assert worker.next_batch()[1] == [1]
    assert exited(core, 2) == (1, 0, 1)  # 2 had not run on the first worker
    worker = loaded_worker(core, 3)
    assert worker.next_batch()[1] == [2]


def test_a_timed_out_batch_is_not_retried_and_the_rest_is(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    loaded_worker(core, 1)
    submit(core, 1, 2)
    assert exited(core, 1, timed_out=True) == (0, 1, 1)
    assert body(answers(core, 1)[0]) == b"timed out"
    worker = loaded_worker(core, 2)
    assert worker.next_batch()[1] == [2]


def test_running_batch_seconds_counts_from_when_the_batch_started(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    assert core.running_batch_seconds(1) < 0
    submit(core, 1)
    batch_id, ids = worker.next_batch()
    time.sleep(0.05)
    assert core.running_batch_seconds(1) >= 0.05
    worker.answer(batch_id, ids)
    answers(core, 1)
    assert core.running_batch_seconds(1) < 0


def test_answers_written_just_before_death_still_count(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    batch_id, ids = worker.next_batch()
    worker.answer(batch_id, ids)
    assert exited(core, 1) == (0, 0, 0)
    assert core.queued(1) == 0
    assert answers(core, 1)[0][0] == 1


def test_a_worker_that_never_ran_is_forgotten_with_nothing_held(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    core.add_worker(1, 1, frames.encode_load({}))  # its process never started
    assert exited(core, 1) == (0, 0, 0)
    core.remove_model(1, 503, "gone")  # no worker left behind to block it


def test_an_exit_report_says_whether_the_worker_died_running_a_batch(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core, 1)
    submit(core, 1)
    batch_id, ids = worker.next_batch()
    worker.answer(batch_id, ids)
    answers(core, 1)
    submit(core, 2)
    worker.next_batch()
    assert core.worker_exited(1, False, **ANSWERS)[3] is True
    core.add_model(2, batch_size=1, max_batch_delay=0, max_queue_size=100)
    loaded_worker(core, 2, model_id=2)
    assert core.worker_exited(2, False, **ANSWERS)[3] is False


def test_requests_that_waited_too_long_are_answered_and_the_rest_kept(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)  # no worker: all wait
    submit(core, 1, 2)
    time.sleep(0.2)
    submit(core, 3)
    answer = (503, "waited too long", [("Retry-After", "1")])
    assert core.expire_queued(1, 0.1, answer) == 2
    got = answers(core, 2)
    assert [(r[0], r[1], r[4], body(r)) for r in got] == [
        (1, 503, [["Retry-After", "1"]], b"waited too long"),
        (2, 503, [["Retry-After", "1"]], b"waited too long")]
    assert core.queued(1) == 1


# -- refusals ---------------------------------------------------------------------------

def test_a_full_queue_refuses_new_requests(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=2)
    payload = frames.encode_request(1, "1", "", [], b"")
    assert core.submit(1, 1, payload) == _core.SUBMIT_QUEUED
    assert core.submit(1, 2, payload) == _core.SUBMIT_QUEUED
    assert core.submit(1, 3, payload) == _core.SUBMIT_QUEUE_FULL


def test_a_request_larger_than_a_ring_is_refused(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=2)
    too_big = b"x" * (core.max_request_size + 1)
    assert core.submit(1, 1, too_big) == _core.SUBMIT_TOO_LARGE


def test_a_request_for_an_unknown_model_is_refused(core):
    assert core.submit(99, 1, b"\x90") == _core.SUBMIT_UNKNOWN_MODEL


@pytest.mark.parametrize("setting, value", [
    ("batch_size", 0), ("batch_size", 2**31), ("batch_size", 2**70),
    ("max_batch_delay", -1), ("max_batch_delay", 2**31), ("max_batch_delay", 1e300),
    ("max_batch_delay", float("nan")), ("max_queue_size", -1), ("max_queue_size", 2**40),
])
def test_batch_settings_out_of_range_are_refused_not_wrapped(core, setting, value):
    policy = dict(batch_size=1, max_batch_delay=0, max_queue_size=1)
    policy[setting] = value
    with pytest.raises((ValueError, TypeError)):
        core.add_model(1, **policy)


def test_the_largest_max_batch_delay_does_not_overflow(core):
    core.add_model(1, batch_size=8, max_batch_delay=2**31 - 1, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    worker.next_batch()
    submit(core, 2)  # waits, its deadline 24 days away: not in the past by overflow
    assert worker.next_batch(timeout=0.3) is None


# -- stopping and removing --------------------------------------------------------------

def test_a_stopped_worker_gets_stop_after_the_batches_it_holds(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    submit(core, 1)
    core.stop_worker(1)
    submit(core, 2)
    assert worker.next_batch()[1] == [1]
    assert frames.unpack(worker.channel.receive(timeout=5)) == [frames.STOP]
    assert core.queued(1) == 1  # request 2 waits for another worker


def test_removing_a_model_answers_its_queued_requests(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    submit(core, 1, 2)
    core.remove_model(1, 503, "unregistered")
    assert [(r[0], r[1], body(r)) for r in answers(core, 2)] == [(1, 503, b"unregistered"),
                                                                 (2, 503, b"unregistered")]
    assert core.submit(1, 3, b"\x90") == _core.SUBMIT_UNKNOWN_MODEL


def test_a_model_with_workers_cannot_be_removed(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    loaded_worker(core)
    with pytest.raises(RuntimeError, match="still has workers"):
        core.remove_model(1, 503, "")


def test_unreadable_frames_mark_the_worker_broken(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    worker.channel.send(b"\xc1 not msgpack")
    _, events = take_from(core, lambda replies, events: any(k == frames.BROKEN for _, k, _ in events))
    assert events[-1][0] == 1
    submit(core, 1)
    assert worker.next_batch(timeout=0.3) is None  # a broken worker gets no batches


# -- channels ---------------------------------------------------------------------------

def test_a_worker_channel_is_four_descriptors_of_anonymous_memory_and_eventfds(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    fds = core.add_worker(1, 1, frames.encode_load({}))
    targets = [os.readlink(f"/proc/self/fd/{fd}") for fd in fds]
    assert targets[0].startswith("/memfd:pyserve-channel") and targets[1].startswith("/memfd:")
    assert targets[2] == targets[3] == "anon_inode:[eventfd]"
    assert not any("/dev/shm" in target for target in targets)


def test_two_workers_share_no_descriptor(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    first = core.add_worker(1, 1, frames.encode_load({}))
    second = core.add_worker(2, 1, frames.encode_load({}))
    assert not set(first) & set(second)


# -- frontends --------------------------------------------------------------------------

class FrontendEnd:
    """A frontend's end of its channel, played by the test."""

    def __init__(self, core):
        self.origin, fds = core.add_frontend()
        self.channel = _core.FrontendChannel(*channel_fds(fds))
        self.next = 0

    def submit(self, model_id: int = 1, worker: int = 0) -> int:
        self.next += 1
        id = (self.origin << _core.ORIGIN_SHIFT) | self.next
        payload = frames.encode_request(id, str(id), "", [], b"x")
        assert self.channel.submit(model_id, id, payload, worker) == _core.WRITTEN
        return id

    def replies(self, count: int, timeout: float = 5.0) -> list:
        got: list = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out; got {got}"
            select.select([self.channel.wait_fd], [], [], remaining)
            got += [frames.unpack(reply) for reply in self.channel.take()]
        return got


def test_requests_from_two_frontends_meet_in_one_batch(core):
    core.add_model(1, batch_size=2, max_batch_delay=LONG, max_queue_size=100)
    worker = loaded_worker(core)
    first, second = FrontendEnd(core), FrontendEnd(core)
    submit(core, 1)
    worker.next_batch()  # the worker is busy: the next two wait for a batch of 2
    ids = [first.submit(), second.submit()]
    batch_id, batch = worker.next_batch()
    assert sorted(batch) == sorted(ids)
    worker.answer(batch_id, batch)
    assert [r[2][0][0] for r in first.replies(1)] == [ids[0]]
    assert [r[2][0][0] for r in second.replies(1)] == [ids[1]]


def test_a_frontend_request_the_model_cannot_take_is_refused_back_to_it(core):
    front = FrontendEnd(core)
    id = front.submit(model_id=99)
    assert front.replies(1) == [[frames.REFUSED, id, _core.SUBMIT_UNKNOWN_MODEL]]


def test_a_frontend_cannot_submit_ids_of_another_origin(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    front = FrontendEnd(core)
    forged = 5  # origin 0: this process's range
    payload = frames.encode_request(forged, "x", "", [], b"x")
    assert front.channel.submit(1, forged, payload) == _core.WRITTEN
    _, events = take_from(core, lambda replies, events: events)
    assert events[0][1] == frames.BROKEN and b"outside its range" in events[0][2]
    assert worker.next_batch(timeout=0.2) is None


def test_what_a_removed_frontend_queued_never_runs(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    front = FrontendEnd(core)
    ids = [front.submit() for _ in range(4)]  # two go to the worker, two wait
    batch_id, running = worker.next_batch()
    worker.next_batch()
    core.remove_frontend(front.origin)
    assert core.queued(1) == 0
    worker.answer(batch_id, running)  # its answer has nowhere to go, and is dropped
    submit(core, 1)
    worker_batch = worker.next_batch()
    assert worker_batch[1] == [1]
    assert set(ids[2:]).isdisjoint(worker_batch[1])


def test_a_cancel_from_a_frontend_takes_its_request_out(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(core)
    front = FrontendEnd(core)
    ids = [front.submit() for _ in range(3)]
    front.channel.cancel(1, ids[2])
    for _ in range(2):
        batch_id, batch = worker.next_batch()
        worker.answer(batch_id, batch)
    assert worker.next_batch(timeout=0.3) is None
    assert core.queued(1) == 0


def test_replies_wait_in_the_core_while_a_frontend_does_not_read(core):
    """A frontend that does not read for a while loses nothing: what its channel cannot hold
    waits in the core and is written when it reads again."""
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=1000)
    worker = loaded_worker(core)
    front = FrontendEnd(core)
    big = b"y" * (300 * 1024)  # four of these fill a 1 MiB channel
    ids = [front.submit() for _ in range(8)]
    answered = 0
    while answered < 8:
        batch_id, batch = worker.next_batch()
        worker.channel.send(frames.encode_results(batch_id, True, [[batch[0], 200, "", None, [], big]]))
        answered += 1
    got = [r[2][0] for r in front.replies(8, timeout=10)]
    assert [r[0] for r in got] == ids
    assert all(body(r) == big for r in got)
