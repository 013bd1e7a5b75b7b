"""The batcher and scheduler, driven through the bindings with the test playing the worker.

The test holds the worker's ends of real shared-memory rings (WorkerChannel), so every
batch it sees went through the same path a worker process reads.
"""

from __future__ import annotations

import time

import pytest

from pyserve import _core, protocol

from helpers import RingWorker, loaded_worker, scheduler_under_test, take_completions

LONG = 10_000  # ms: a max_batch_delay that never runs out within a test


@pytest.fixture
def scheduler():
    with scheduler_under_test() as scheduler:
        yield scheduler


def submit(scheduler, *ids: int, model_id: int = 1) -> None:
    for id in ids:
        payload = protocol.encode_request(id, str(id), "", [], b"x")
        assert scheduler.submit(model_id, id, payload) == _core.SUBMIT_QUEUED


def test_a_request_goes_out_at_once_when_a_worker_is_idle(scheduler):
    scheduler.add_model(1, batch_size=8, max_batch_delay=LONG, max_queue_size=100)
    worker = loaded_worker(scheduler)
    submit(scheduler, 1)
    assert worker.next_batch()[1] == [1]


def test_requests_wait_for_a_worker_that_is_still_loading(scheduler):
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = RingWorker(scheduler, 1)
    submit(scheduler, 1)
    assert worker.next_batch(timeout=0.2) is None
    worker.load()
    assert worker.next_batch()[1] == [1]


def test_while_workers_are_busy_a_batch_leaves_when_batch_size_is_reached(scheduler):
    scheduler.add_model(1, batch_size=3, max_batch_delay=LONG, max_queue_size=100)
    worker = loaded_worker(scheduler)
    submit(scheduler, 1)
    assert worker.next_batch()[1] == [1]  # the worker is now busy with it
    submit(scheduler, 2, 3)
    assert worker.next_batch(timeout=0.3) is None
    submit(scheduler, 4)
    assert worker.next_batch()[1] == [2, 3, 4]


def test_while_workers_are_busy_a_batch_leaves_after_max_batch_delay(scheduler):
    scheduler.add_model(1, batch_size=8, max_batch_delay=200, max_queue_size=100)
    worker = loaded_worker(scheduler)
    submit(scheduler, 1)
    worker.next_batch()
    started = time.monotonic()
    submit(scheduler, 2, 3)
    assert worker.next_batch(timeout=10)[1] == [2, 3]
    assert time.monotonic() - started >= 0.2


def test_a_freed_worker_takes_what_queued_meanwhile(scheduler):
    scheduler.add_model(1, batch_size=4, max_batch_delay=LONG, max_queue_size=100)
    worker = loaded_worker(scheduler)
    submit(scheduler, 1)
    batch_id, ids = worker.next_batch()
    submit(scheduler, 2, 3)
    worker.answer(batch_id, ids)  # idle again: what waits leaves without the delay
    assert worker.next_batch()[1] == [2, 3]


def test_a_worker_holds_at_most_two_batches(scheduler):
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(scheduler)
    submit(scheduler, 1, 2, 3, 4)
    assert worker.next_batch()[1] == [1]
    assert worker.next_batch()[1] == [2]
    assert worker.next_batch(timeout=0.3) is None
    assert scheduler.queued(1) == 2


def test_batches_go_to_the_worker_with_fewest_in_flight(scheduler):
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    first, second = loaded_worker(scheduler, 1), loaded_worker(scheduler, 2)
    submit(scheduler, 1, 2)
    assert {first.next_batch()[1][0], second.next_batch()[1][0]} == {1, 2}
    assert scheduler.in_flight(1) == scheduler.in_flight(2) == 1


def test_batches_carry_each_request_byte_for_byte(scheduler):
    scheduler.add_model(1, batch_size=2, max_batch_delay=LONG, max_queue_size=100)
    worker = loaded_worker(scheduler)
    submit(scheduler, 1)
    worker.next_batch()
    payloads = [protocol.encode_request(n, f"r{n}", "text/plain", [[b"a", b"b"]], bytes(range(n)))
                for n in (2, 3)]
    for n, payload in zip((2, 3), payloads):
        scheduler.submit(1, n, payload)
    frame = worker.channel.receive(timeout=5)
    assert frame.endswith(b"".join(payloads))


def test_answers_reach_python_through_the_notify_fd(scheduler):
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(scheduler)
    submit(scheduler, 7)
    batch_id, ids = worker.next_batch()
    worker.answer(batch_id, ids)
    got = take_completions(scheduler, lambda got: any(k == protocol.RESULTS for _, k, _ in got))
    (worker_id, kind, frame), = got
    assert (worker_id, kind) == (1, protocol.RESULTS)
    assert protocol.unpack(frame)[3][0][0] == 7
    assert scheduler.in_flight(1) == 0


def test_requests_of_a_dead_worker_are_retried_once_on_another(scheduler):
    scheduler.add_model(1, batch_size=2, max_batch_delay=0, max_queue_size=100)
    dying, survivor = loaded_worker(scheduler, 1), loaded_worker(scheduler, 2)
    submit(scheduler, 1)
    holder = dying if dying.next_batch(timeout=1) else survivor
    other = survivor if holder is dying else dying
    assert scheduler.worker_exited(holder.id) == ([], [])  # nothing failed: it is retried
    assert other.next_batch()[1] == [1]


def test_a_request_whose_workers_die_twice_is_failed_not_retried_again(scheduler):
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    first = loaded_worker(scheduler, 1)
    submit(scheduler, 1)
    first.next_batch()
    assert scheduler.worker_exited(1) == ([], [])
    second = loaded_worker(scheduler, 2)
    assert second.next_batch()[1] == [1]
    assert scheduler.worker_exited(2) == ([1], [])
    assert scheduler.queued(1) == 0


def test_only_the_running_batch_is_blamed_for_a_death(scheduler):
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(scheduler, 1)
    submit(scheduler, 1, 2)  # 1 runs, 2 waits behind it in the ring
    assert scheduler.worker_exited(1) == ([], [])
    worker = loaded_worker(scheduler, 2)
    assert worker.next_batch()[1] == [1]
    assert scheduler.worker_exited(2) == ([1], [])  # 2 had not run on the first worker
    worker = loaded_worker(scheduler, 3)
    assert worker.next_batch()[1] == [2]


def test_a_timed_out_batch_is_not_retried_and_the_rest_is(scheduler):
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    loaded_worker(scheduler, 1)
    submit(scheduler, 1, 2)
    assert scheduler.worker_exited(1, timed_out=True) == ([], [1])
    worker = loaded_worker(scheduler, 2)
    assert worker.next_batch()[1] == [2]


def test_running_batch_seconds_counts_from_when_the_batch_started(scheduler):
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(scheduler)
    assert scheduler.running_batch_seconds(1) < 0
    submit(scheduler, 1)
    batch_id, ids = worker.next_batch()
    time.sleep(0.05)
    assert scheduler.running_batch_seconds(1) >= 0.05
    worker.answer(batch_id, ids)
    take_completions(scheduler, lambda got: any(k == protocol.RESULTS for _, k, _ in got))
    assert scheduler.running_batch_seconds(1) < 0


def test_answers_written_just_before_death_still_count(scheduler):
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(scheduler)
    submit(scheduler, 1)
    batch_id, ids = worker.next_batch()
    worker.answer(batch_id, ids)
    assert scheduler.worker_exited(1) == ([], [])
    assert scheduler.queued(1) == 0
    got = take_completions(scheduler, lambda got: any(k == protocol.RESULTS for _, k, _ in got))
    assert protocol.unpack(got[-1][2])[3][0][0] == 1


def test_a_full_queue_refuses_new_requests(scheduler):
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=2)
    payload = protocol.encode_request(1, "1", "", [], b"")
    assert scheduler.submit(1, 1, payload) == _core.SUBMIT_QUEUED
    assert scheduler.submit(1, 2, payload) == _core.SUBMIT_QUEUED
    assert scheduler.submit(1, 3, payload) == _core.SUBMIT_QUEUE_FULL


def test_a_request_larger_than_a_ring_is_refused(scheduler):
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=2)
    too_big = b"x" * (scheduler.max_request_size + 1)
    assert scheduler.submit(1, 1, too_big) == _core.SUBMIT_TOO_LARGE


def test_a_request_for_an_unknown_model_is_refused(scheduler):
    assert scheduler.submit(99, 1, b"\x90") == _core.SUBMIT_UNKNOWN_MODEL


def test_a_stopped_worker_gets_stop_after_the_batches_it_holds(scheduler):
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(scheduler)
    submit(scheduler, 1)
    scheduler.stop_worker(1)
    submit(scheduler, 2)
    assert worker.next_batch()[1] == [1]
    assert protocol.unpack(worker.channel.receive(timeout=5)) == [protocol.STOP]
    assert scheduler.queued(1) == 1  # request 2 waits for another worker


def test_removing_a_model_hands_back_its_queued_requests(scheduler):
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    submit(scheduler, 1, 2)
    assert scheduler.remove_model(1) == [1, 2]
    assert scheduler.submit(1, 3, b"\x90") == _core.SUBMIT_UNKNOWN_MODEL


def test_unreadable_frames_mark_the_worker_broken(scheduler):
    scheduler.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker = loaded_worker(scheduler)
    worker.channel.send(b"\xc1 not msgpack")
    got = take_completions(scheduler, lambda got: any(k == protocol.BROKEN for _, k, _ in got))
    assert got[-1][0] == 1
    submit(scheduler, 1)
    assert worker.next_batch(timeout=0.3) is None  # a broken worker gets no batches
