"""KServe's Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, KServe's
grpc_predict_v2.proto), served on the gRPC inference listener beside TorchServe's own API,
as TorchServe serves it behind KServe.

ModelInfer's tensors are checked as the REST protocol's are (pyserve.frontend.kserve.tensors,
through pyserve.grpc.oip_messages) and go to the model through the same Predictor, as the
same JSON, so gRPC, REST and KServe v2 requests share a model's batches. Every failure is a
gRPC status: NOT_FOUND for an unknown model, INVALID_ARGUMENT for a malformed tensor,
UNAVAILABLE when no worker can take the request, from the one table in pyserve.grpc.errors.
"""

from __future__ import annotations

import grpc

from pyserve import __version__
from pyserve.errors import ServeError
from pyserve.frames import Result
from pyserve.frontend.http import RequestIds
from pyserve.frontend.kserve.responses import JSON, failure_message
from pyserve.frontend.kserve.tensors import TensorError, answer_document, read_document
from pyserve.frontend.predictions import Predictor
from pyserve.grpc.errors import status_code
from pyserve.grpc.oip_messages import request_document, response_message
from pyserve.grpc.protos import grpc_predict_v2_pb2 as oip
from pyserve.grpc.protos import grpc_predict_v2_pb2_grpc as oip_grpc
from pyserve.serving.directory import Directory, ModelView
from pyserve.serving.streamed import Streamed


async def _whole(answer: Result | Streamed) -> Result:
    """ModelInfer has a single response: a stream's parts join."""
    return answer if isinstance(answer, Result) else await answer.whole()


class OpenInferenceService(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, directory: Directory):
        self.directory = directory
        self.predictor = Predictor(directory)
        self.ids = RequestIds()

    async def _model(self, name: str, version: str, context) -> ModelView:
        try:
            return self.directory.model(name, version or None)
        except ServeError as error:
            await context.abort(status_code(error.code), error.message)

    async def ServerLive(self, request, context):
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return oip.ServerReadyResponse(ready=self.directory.healthy())

    async def ModelReady(self, request, context):
        model = await self._model(request.name, request.version, context)
        return oip.ModelReadyResponse(ready=model.can_serve())

    async def ServerMetadata(self, request, context):
        return oip.ServerMetadataResponse(name="pyserve", version=__version__)

    async def ModelMetadata(self, request, context):
        model = await self._model(request.name, request.version, context)
        return oip.ModelMetadataResponse(name=model.name, versions=[model.version], platform="")

    async def ModelInfer(self, request, context):
        name, version = request.model_name, request.model_version or None
        try:
            self.directory.model(name, version)
            document, raw = request_document(request)
            tensors = read_document(document, memoryview(raw))
            answer = await _whole(await self.predictor.predict(
                name, version, "", False, self.ids.next(), [], JSON, tensors.body))
            if answer.status >= 400:
                await context.abort(status_code(answer.status), failure_message(answer))
            answered = answer_document(answer.body, tensors)
            if answered is None:
                raise TensorError("The model's answer is not an inference response (does it "
                                  "run with service_envelope=kservev2?)", 500)
            return response_message(answered[0], request)
        except (ServeError, TensorError) as error:
            await context.abort(status_code(error.code), error.message)


def add_open_inference_service(server: grpc.aio.Server, directory: Directory) -> None:
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(OpenInferenceService(directory), server)
