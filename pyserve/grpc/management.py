"""TorchServe's gRPC management API (management.proto): the REST management API's own
operations (pyserve.frontend.management), with the parameters read as TorchServe reads
them from a proto3 message, where an unset field is 0 or "".

A number of 0 or less, or an empty string, means "not given" (TorchServe's
GRPCUtils.getRegisterParam): ScaleWorker's min_worker is then 1, its max_worker min_worker,
and a registration takes the archive's or the server's defaults. `synchronous` is false unless
set, for RegisterModel too. Answers are the REST API's messages; JSON ones are formatted as
TorchServe's Gson formats them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable

import grpc

from pyserve.config import Settings
from pyserve.engine import Engine
from pyserve.engine.loading import RegisterOptions
from pyserve.errors import BadRequest, ServeError
from pyserve.frontend.management import (MAX_PAGE, describe_models, model_list, register_model,
                                         scale_workers, set_default_version, unregister_model)
from pyserve.frontend.tokens import KeyCheck
from pyserve.grpc.errors import Failure
from pyserve.grpc.listeners import GrpcListener, make_grpc_listener
from pyserve.grpc.protos import management_pb2, management_pb2_grpc


def _given(value: int) -> int | None:
    return value if value > 0 else None


def _json(content) -> str:
    return json.dumps(content, indent=2)


class ManagementService(management_pb2_grpc.ManagementAPIsServiceServicer):
    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.settings = settings

    @staticmethod
    async def _answer(context: grpc.aio.ServicerContext, operation: Awaitable[str]):
        """The message `operation` answers with, or its error as TorchServe maps it."""
        try:
            return management_pb2.ManagementResponse(msg=await operation)
        except ServeError as error:
            await Failure.of(error).abort(context)

    def _check_model_api(self) -> None:
        if not self.settings.enable_model_api:
            raise ServeError(403, "ModelException", "Model API disabled")

    async def DescribeModel(self, request, context):
        async def describe() -> str:
            return _json(await describe_models(self.engine, request.model_name,
                                               request.model_version or None, request.customized))
        return await self._answer(context, describe())

    async def ListModels(self, request, context):
        async def listing() -> str:
            limit = request.limit if 0 < request.limit <= MAX_PAGE else MAX_PAGE
            return _json(model_list(self.engine, limit, max(request.next_page_token, 0)))
        return await self._answer(context, listing())

    async def RegisterModel(self, request, context):
        async def register() -> str:
            self._check_model_api()
            options = RegisterOptions(
                model_name=request.model_name or None,
                handler=request.handler or None,
                runtime=request.runtime or None,
                batch_size=_given(request.batch_size),
                max_batch_delay=_given(request.max_batch_delay),
                initial_workers=_given(request.initial_workers),
                response_timeout=_given(request.response_timeout),
                startup_timeout=_given(request.startup_timeout),
            )
            _, message = await register_model(self.engine, request.url or None, options,
                                              request.synchronous)
            return message
        return await self._answer(context, register())

    async def ScaleWorker(self, request, context):
        async def scale() -> str:
            min_worker = _given(request.min_worker) or 1
            _, message = await scale_workers(
                self.engine, request.model_name, request.model_version or None, min_worker,
                _given(request.max_worker) or min_worker, request.synchronous)
            return message
        return await self._answer(context, scale())

    async def SetDefault(self, request, context):
        return await self._answer(context, set_default_version(self.engine, request.model_name,
                                                               request.model_version))

    async def UnregisterModel(self, request, context):
        async def unregister() -> str:
            self._check_model_api()
            if not request.model_name:
                raise BadRequest("Parameter url is required.")  # sic: TorchServe's message
            return await unregister_model(self.engine, self.settings, request.model_name,
                                          request.model_version or None)
        return await self._answer(context, unregister())


def management_listener(engine: Engine, settings: Settings,
                        keys: KeyCheck | None) -> GrpcListener:
    return make_grpc_listener(
        "grpc_management",
        lambda server: management_pb2_grpc.add_ManagementAPIsServiceServicer_to_server(
            ManagementService(engine, settings), server),
        settings, keys, "management")
