"""The core's stateful sequences (csrc/core/sequences.hpp), clientTimeoutInMills, and the
wait-for-a-full-batch policy, played against a worker the test controls."""

from __future__ import annotations

import time

import pytest

from pyserve import _core, frames

from helpers import RingWorker, core_under_test, loaded_worker, results_in, take_from

ANSWERS = dict(died_twice=(500, b"twice"), timed_out_answer=(500, b"late"), lost=(500, b"lost"))


@pytest.fixture
def core():
    with core_under_test() as core:
        core.add_model(1, 8, 1000.0, 100)
        yield core


def stateful(core, max_sequences=4, max_queue=10, max_idle=60_000, timeout=0, continuous=False):
    core.set_sequences(1, max_sequences, max_queue, max_idle, timeout, continuous)


def send(core, id: int, sequence: int = 0) -> int:
    return core.submit(1, id, frames.encode_request(id, str(id), "", [], b"x"), 0, sequence)


def answers(core, count: int) -> list:
    replies, _ = take_from(core, lambda replies, _: len(results_in(replies)) >= count)
    return results_in(replies)


def reply(worker: RingWorker, batch_id: int, ids: list[int], headers=(), more=False) -> None:
    results = [[id, 200, "", None, [list(h) for h in headers], b"ok", *([True] if more else [])]
               for id in ids]
    assert worker.channel.send(frames.encode_results(batch_id, not more, results)) == _core.WRITTEN


def test_a_sequences_requests_run_one_at_a_time_in_order(core):
    stateful(core)
    worker = loaded_worker(core)
    for id in (1, 2, 3):
        assert send(core, id, sequence=7) == _core.SUBMIT_QUEUED
    for expected in (1, 2, 3):
        batch_id, ids = worker.next_batch()
        assert ids == [expected]
        assert worker.next_batch(timeout=0.1) is None  # the next waits for this answer
        reply(worker, batch_id, ids)


def test_requests_of_different_sequences_share_a_batch(core):
    stateful(core)
    core.set_policy(1, 3, 10_000.0, 100)
    worker = loaded_worker(core)
    send(core, 1, sequence=7)
    assert worker.next_batch()[1] == [1]  # an idle worker takes it at once
    for id, sequence in ((2, 8), (3, 9), (4, 10)):
        send(core, id, sequence)
    assert sorted(worker.next_batch()[1]) == [2, 3, 4]


def test_a_sequence_stays_on_the_worker_that_ran_its_first_request(core):
    stateful(core)
    workers = [loaded_worker(core, 1), loaded_worker(core, 2)]
    send(core, 1, sequence=7)
    holder, batch = next((w, b) for w in workers for b in [w.next_batch(timeout=0.3)] if b)
    other = workers[1] if holder is workers[0] else workers[0]
    for id in (2, 3, 4):
        holder.answer(*batch)
        send(core, id, sequence=7)
        batch = holder.next_batch()
        assert batch[1] == [id]
    assert other.next_batch(timeout=0.1) is None


def test_a_new_sequence_past_max_num_sequence_is_refused(core):
    stateful(core, max_sequences=2)
    loaded_worker(core)
    assert send(core, 1, sequence=7) == _core.SUBMIT_QUEUED
    assert send(core, 2, sequence=8) == _core.SUBMIT_QUEUED
    assert send(core, 3, sequence=9) == _core.SUBMIT_TOO_MANY_SEQUENCES
    assert send(core, 4, sequence=7) == _core.SUBMIT_QUEUED  # an open sequence goes on


def test_a_sequence_holds_at_most_max_sequence_job_queue_size_waiting_requests(core):
    stateful(core, max_queue=2)
    loaded_worker(core)
    statuses = [send(core, id, sequence=7) for id in (1, 2, 3, 4)]
    assert statuses == [_core.SUBMIT_QUEUED] * 3 + [_core.SUBMIT_SEQUENCE_FULL]


def test_an_idle_sequence_is_closed_and_its_id_refused(core):
    stateful(core, max_idle=50)
    worker = loaded_worker(core)
    send(core, 1, sequence=7)
    worker.answer(*worker.next_batch())
    answers(core, 1)
    time.sleep(0.1)
    assert send(core, 2, sequence=7) == _core.SUBMIT_SEQUENCE_CLOSED


def test_a_sequence_past_its_timeout_is_closed_even_while_busy(core):
    stateful(core, timeout=100)
    worker = loaded_worker(core)
    send(core, 1, sequence=7)
    batch = worker.next_batch()
    time.sleep(0.15)
    assert send(core, 2, sequence=7) == _core.SUBMIT_SEQUENCE_CLOSED
    worker.answer(*batch)


def test_the_handler_ends_a_sequence_with_ts_request_sequence_end(core):
    stateful(core)
    worker = loaded_worker(core)
    send(core, 1, sequence=7)
    batch_id, ids = worker.next_batch()
    reply(worker, batch_id, ids, headers=[("ts_request_sequence_end", "seq-7")])
    answers(core, 1)
    assert send(core, 2, sequence=7) == _core.SUBMIT_SEQUENCE_CLOSED


def test_a_dead_workers_sequences_are_closed_and_their_waiting_requests_answered(core):
    stateful(core)
    worker = loaded_worker(core)
    send(core, 1, sequence=7)
    send(core, 2, sequence=7)
    worker.next_batch()
    core.worker_exited(1, False, **ANSWERS)
    assert sorted(result[0] for result in answers(core, 2)) == [1, 2]
    assert send(core, 3, sequence=7) == _core.SUBMIT_SEQUENCE_CLOSED


def test_continuous_batching_lets_the_next_request_go_after_the_first_part(core):
    stateful(core, continuous=True)
    worker = loaded_worker(core)
    send(core, 1, sequence=7)
    send(core, 2, sequence=7)
    batch_id, ids = worker.next_batch()
    assert worker.next_batch(timeout=0.1) is None
    reply(worker, batch_id, ids, more=True)
    assert worker.next_batch()[1] == [2]


def test_without_continuous_batching_a_part_does_not_let_the_next_request_go(core):
    stateful(core)
    worker = loaded_worker(core)
    send(core, 1, sequence=7)
    send(core, 2, sequence=7)
    batch_id, ids = worker.next_batch()
    reply(worker, batch_id, ids, more=True)
    assert worker.next_batch(timeout=0.2) is None


def test_a_request_queued_past_client_timeout_is_answered_and_never_run():
    with core_under_test() as core:
        core.add_model(1, 1, 0.0, 100, client_timeout=50)
        worker = loaded_worker(core)
        send(core, 1)
        batch = worker.next_batch()
        send(core, 2)  # not sent on to the worker: it would wait in its ring, out of reach
        assert worker.next_batch(timeout=0.1) is None
        worker.answer(*batch)
        late = [result for result in answers(core, 2) if result[0] == 2][0]
        assert late[1] == 503 and b"clientTimeoutInMills=50" in late[5]
        assert worker.next_batch(timeout=0.2) is None


def test_an_idle_worker_gets_a_lone_request_at_once_by_default(core):
    worker = loaded_worker(core)
    send(core, 1)
    assert worker.next_batch(timeout=0.5)[1] == [1]


def test_wait_for_full_batch_holds_a_lone_request_for_max_batch_delay():
    with core_under_test() as core:
        core.add_model(1, 4, 300.0, 100, wait_for_full_batch=True)
        worker = loaded_worker(core)
        send(core, 1)
        assert worker.next_batch(timeout=0.1) is None
        assert worker.next_batch(timeout=1.0)[1] == [1]
        for id in (2, 3, 4, 5):
            send(core, id)
        assert worker.next_batch(timeout=0.1)[1] == [2, 3, 4, 5]  # a full batch goes at once
