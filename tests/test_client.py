"""How a process's Python meets the core: futures resolved from reply frames, refusals as
TorchServe's errors, parts of streamed answers, and cancelling (serving/client.py)."""

from __future__ import annotations

import asyncio

import pytest

from pyserve import _core, frames
from pyserve.errors import QueueFull, ServeError
from pyserve.serving.client import ChannelClient, LocalClient

from helpers import channel_fds, core_under_test, loaded_worker, wait_until


@pytest.fixture
def core():
    with core_under_test() as core:
        core.add_model(1, batch_size=1, max_batch_delay=0, max_queue_size=2)
        yield core


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def answer_next(worker, *, parts: int = 0) -> None:
    batch_id, ids = worker.next_batch()
    for n in range(parts):
        worker.channel.send(frames.encode_results(
            batch_id, False, [[ids[0], 200, "", None, [], f"part {n}".encode(), True]]))
    worker.answer(batch_id, ids)


def test_a_submitted_request_resolves_with_its_result(core):
    worker = loaded_worker(core)

    async def main():
        client = LocalClient(core, asyncio.get_running_loop(), lambda events: None)
        _, future = client.submit(1, "r1", "text/plain", [], b"hi")
        await asyncio.to_thread(answer_next, worker)
        result = await future
        client.close()
        return result

    result = run(main())
    assert (result.status, result.body, result.more) == (200, b"ok", False)


def test_a_refusal_is_raised_as_torchserve_error(core):
    loaded_worker(core)  # takes two requests; the queue holds two more

    async def main():
        client = LocalClient(core, asyncio.get_running_loop(), lambda events: None)
        try:
            for n in range(4):
                client.submit(1, f"r{n}", "", [], b"")
            with pytest.raises(QueueFull):
                client.submit(1, "r4", "", [], b"")
            with pytest.raises(ServeError, match="not being served"):
                client.submit(99, "r5", "", [], b"")
        finally:
            client.close()

    run(main())


def test_a_streamed_answer_resolves_to_its_first_part_then_gives_the_rest_in_order(core):
    worker = loaded_worker(core)

    async def main():
        client = LocalClient(core, asyncio.get_running_loop(), lambda events: None)
        _, future = client.submit(1, "r1", "", [], b"x")
        await asyncio.to_thread(answer_next, worker, parts=2)
        stream = await future
        rest = [part.body async for part in stream.rest()]
        client.close()
        return stream.first.body, rest

    assert run(main()) == (b"part 0", [b"part 1", b"ok"])


def test_a_withdrawn_request_never_runs(core):
    worker = loaded_worker(core)

    async def main():
        client = LocalClient(core, asyncio.get_running_loop(), lambda events: None)
        first, second, third = (client.submit(1, f"r{n}", "", [], b"x") for n in range(3))
        client.withdraw(1, third[0])  # the first two went to the worker; the third waited
        for _ in range(2):
            await asyncio.to_thread(answer_next, worker)
        await asyncio.gather(first[1], second[1])
        assert await asyncio.to_thread(worker.next_batch, 0.3) is None
        assert not third[1].done()
        client.close()

    run(main())


def test_a_frontend_client_gets_its_answers_through_its_channel(core):
    worker = loaded_worker(core)
    origin, fds = core.add_frontend()

    async def main():
        channel = _core.FrontendChannel(*channel_fds(fds))
        client = ChannelClient(channel, origin, asyncio.get_running_loop())
        id, future = client.submit(1, "r1", "", [], b"x")
        assert id >> _core.ORIGIN_SHIFT == origin
        await asyncio.to_thread(answer_next, worker)
        result = await future
        client.close()
        return result

    assert run(main()).body == b"ok"


def test_a_withdrawn_frontend_request_never_runs(core):
    worker = loaded_worker(core)
    origin, fds = core.add_frontend()

    async def main():
        client = ChannelClient(_core.FrontendChannel(*channel_fds(fds)), origin,
                               asyncio.get_running_loop())
        first, second, third = (client.submit(1, f"r{n}", "", [], b"x") for n in range(3))
        await asyncio.to_thread(wait_until, lambda: core.queued(1) == 1)
        client.withdraw(1, third[0])
        await asyncio.to_thread(wait_until, lambda: core.queued(1) == 0)
        for _ in range(2):
            await asyncio.to_thread(answer_next, worker)
        await asyncio.gather(first[1], second[1])
        assert await asyncio.to_thread(worker.next_batch, 0.3) is None
        assert core.withdrawn(1) == (1, 1, 0, 0)
        client.close()

    run(main())


def test_a_frontend_request_the_core_refuses_raises_in_the_frontend(core):
    origin, fds = core.add_frontend()

    async def main():
        client = ChannelClient(_core.FrontendChannel(*channel_fds(fds)), origin,
                               asyncio.get_running_loop())
        _, future = client.submit(99, "r1", "", [], b"x")
        with pytest.raises(ServeError, match="not being served"):
            await future
        client.close()

    run(main())


def test_fail_all_answers_every_pending_request(core):
    async def main():
        client = LocalClient(core, asyncio.get_running_loop(), lambda events: None)
        _, future = client.submit(1, "r1", "", [], b"x")  # no worker: it waits
        client.fail_all(ServeError(503, "ServiceUnavailableException", "shutting down"))
        with pytest.raises(ServeError, match="shutting down"):
            await future
        client.close()

    run(main())
