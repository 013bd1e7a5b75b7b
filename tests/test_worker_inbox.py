"""A worker leaves out of a batch it has not started the requests withdrawn meanwhile: their
client hung up while the batch waited in the worker's ring behind the one it ran."""

from __future__ import annotations

import pytest

from pyserve import _core, frames
from pyserve.worker.inbox import Inbox

from helpers import core_under_test, loaded_worker


@pytest.fixture
def core():
    with core_under_test() as core:
        yield core


def submit_ids(core, *ids: int) -> None:
    for id in ids:
        payload = frames.encode_request(id, str(id), "", [], b"x")
        assert core.submit(1, id, payload) == _core.SUBMIT_QUEUED


def worker_inbox(core):
    """A loaded worker's channel read through an Inbox, as pyserve.worker.main reads it."""
    worker = loaded_worker(core)
    inbox = Inbox(worker.channel)

    def read():
        return frames.decode_request_frame(worker.channel.receive(timeout=5))

    return worker, inbox, read


def ids(requests: list[dict]) -> list[int]:
    return [request["id"] for request in requests]


def test_a_request_withdrawn_while_its_batch_waits_is_left_out_of_it(core):
    core.add_model(1, batch_size=2, max_batch_delay=10_000, max_queue_size=100)
    worker, inbox, read = worker_inbox(core)
    submit_ids(core, 1)
    first = inbox.next(read)
    submit_ids(core, 2, 3)  # the next batch, sent while the first runs
    assert core.cancel(1, 2) == _core.CANCEL_RUNNING
    assert ids(inbox.without_withdrawn(first[2])) == [1]
    second = inbox.next(read)
    assert ids(inbox.without_withdrawn(second[2])) == [3]


def test_a_withdrawal_that_comes_after_its_batch_was_read_ahead_still_applies(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker, inbox, read = worker_inbox(core)
    submit_ids(core, 1, 2)
    first = inbox.next(read)
    assert ids(inbox.without_withdrawn(first[2])) == [1]  # reads batch 2 ahead
    core.cancel(1, 2)
    second = inbox.next(read)
    assert ids(inbox.without_withdrawn(second[2])) == []


def test_a_withdrawal_of_a_request_already_run_is_ignored(core):
    core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=100)
    worker, inbox, read = worker_inbox(core)
    submit_ids(core, 1)
    first = inbox.next(read)
    assert ids(inbox.without_withdrawn(first[2])) == [1]
    core.cancel(1, 1)
    submit_ids(core, 2)
    worker.answer(first[1], [1])
    second = inbox.next(read)
    assert second[0] == frames.BATCH and ids(inbox.without_withdrawn(second[2])) == [2]
