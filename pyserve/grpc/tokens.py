"""Token authorization for the gRPC listeners, as TorchServe's GRPCInterceptor does it: every
call carries `authorization: Bearer <key>` in its metadata, the inference key on the
inference listener and the management key on the management one; any other call is refused
with PERMISSION_DENIED before it runs. The keys are the REST listeners' own
(pyserve.frontend.tokens), so a key regenerated there is in force here at once.
"""

from __future__ import annotations

import grpc

from pyserve.frontend.tokens import AUTHORIZATION_FAILED, KeyCheck


async def _refuse(request, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, AUTHORIZATION_FAILED)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that refuses the call."""
    serializers = {"request_deserializer": handler.request_deserializer,
                   "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_refuse, **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_refuse, **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_refuse, **serializers)
    return grpc.stream_stream_rpc_method_handler(_refuse, **serializers)


class RequireToken(grpc.aio.ServerInterceptor):
    def __init__(self, keys: KeyCheck, kind: str):
        self.keys = keys
        self.kind = kind

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED itself
            return None
        authorization = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                authorization = value
        if self.keys.valid(self.kind, authorization):
            return handler
        return _refusing(handler)
