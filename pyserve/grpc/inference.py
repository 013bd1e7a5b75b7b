"""TorchServe's gRPC inference API (inference.proto): Ping, Predictions, StreamPredictions,
StreamPredictions2.

Every prediction goes through the same Predictor, directory and batchers as a REST one, so a
batch may hold both. A streamed answer (pyserve.serving.streamed) is sent by
StreamPredictions and StreamPredictions2 one message per part as each comes, the last one
last; Predictions answers once, with the parts joined, as REST's body joins them.
StreamPredictions2 runs each request of its stream as it arrives, with its `sequence_id`
(a stateful model's sequence, in order), answers them as they finish, and reports a failed
one in that answer's `status`, going on with the rest.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from pyserve.config import Settings
from pyserve.errors import BadRequest, ServeError
from pyserve.frames import Result
from pyserve.frontend.http import RequestIds
from pyserve.frontend.predictions import Predictor
from pyserve.frontend.tokens import KeyCheck
from pyserve.grpc.errors import Failure, failure_of
from pyserve.grpc.inputs import form_body
from pyserve.grpc.listeners import GrpcListener, make_grpc_listener
from pyserve.grpc.protos import inference_pb2, inference_pb2_grpc
from pyserve.serving.directory import Directory
from pyserve.serving.sequences import SEQUENCE_ID
from pyserve.serving.streamed import Streamed

PredictionResponse = inference_pb2.PredictionResponse


async def _parts(answer: Result | Streamed) -> AsyncIterator[Result]:
    if isinstance(answer, Result):
        yield answer
        return
    yield answer.first
    async for part in answer.rest():
        yield part


class InferenceService(inference_pb2_grpc.InferenceAPIsServiceServicer):
    def __init__(self, directory: Directory):
        self.directory = directory
        self.predictor = Predictor(directory)
        self.ids = RequestIds()

    async def Ping(self, request, context):
        health = "Healthy" if self.directory.healthy() else "Unhealthy"
        return inference_pb2.TorchServeHealthResponse(health=json.dumps({"status": health}, indent=2))

    async def _predict(self, request, headers: list) -> Result | Streamed:
        if not request.model_name:
            raise BadRequest("Parameter model_name is required.")
        content_type, body = form_body(request.input)
        return await self.predictor.predict(request.model_name, request.model_version or None, "",
                                            False, self.ids.next(), headers, content_type, body)

    async def Predictions(self, request, context):
        try:
            answer = await self._predict(request, [])
            parts = [part async for part in _parts(answer)]
        except ServeError as error:
            await Failure.of(error).abort(context)
        for part in parts:
            failure = failure_of(part)
            if failure is not None:
                await failure.abort(context)
        return PredictionResponse(prediction=b"".join(part.body for part in parts))

    async def StreamPredictions(self, request, context):
        try:
            answer = await self._predict(request, [])
        except ServeError as error:
            await Failure.of(error).abort(context)
        try:
            async for part in _parts(answer):
                failure = failure_of(part)
                if failure is not None:
                    await failure.abort(context)
                yield PredictionResponse(prediction=part.body)
        finally:
            # A client that cancels mid-stream cancels the task (the stream's reader withdraws
            # the request), or closes this generator at a yield: then it is withdrawn here.
            if isinstance(answer, Streamed):
                answer.cancel()

    async def StreamPredictions2(self, request_iterator, context):
        answers: asyncio.Queue[PredictionResponse | None] = asyncio.Queue()
        reader = asyncio.create_task(self._run_each(request_iterator, answers))
        try:
            while (answer := await answers.get()) is not None:
                yield answer
        finally:
            reader.cancel()
        await reader  # its error, if reading the requests failed

    async def _run_each(self, requests, answers: asyncio.Queue) -> None:
        """Runs every request of a StreamPredictions2 stream as it arrives; None once all
        are answered."""
        running: set[asyncio.Task] = set()
        try:
            async for request in requests:
                task = asyncio.create_task(self._answer_one(request, answers))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.wait(running)
        finally:
            for task in running:
                task.cancel()
            answers.put_nowait(None)

    async def _answer_one(self, request, answers: asyncio.Queue) -> None:
        try:
            if not request.sequence_id:
                raise BadRequest("Parameter sequenceId is required.")
            answer = await self._predict(request, [(SEQUENCE_ID, request.sequence_id.encode())])
            async for part in _parts(answer):
                failure = failure_of(part)
                answers.put_nowait(PredictionResponse(status=failure.status()) if failure
                                   else PredictionResponse(prediction=part.body))
        except ServeError as error:
            answers.put_nowait(PredictionResponse(status=Failure.of(error).status()))


def inference_listener(directory: Directory, settings: Settings,
                       keys: KeyCheck | None) -> GrpcListener:
    return make_grpc_listener(
        "grpc_inference",
        lambda server: inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(
            InferenceService(directory), server),
        settings, keys, "inference")
