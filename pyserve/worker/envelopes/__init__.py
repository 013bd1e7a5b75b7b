"""TorchServe's request envelopes: `service_envelope` names one, and every handler is wrapped in it.

An envelope reads each request of a batch as its protocol writes it (KServe v1, KServe v2),
hands the handler plain rows, and writes the handler's answers back in the protocol. As in
TorchServe, only `handle` is wrapped; `initialize` meets the handler itself. The classes are
also `ts.torch_handler.request_envelope.*`, for handlers and tests that use them directly.
"""

from __future__ import annotations

import importlib

# service_envelope value -> "module:class", imported only when chosen (kservev2 needs numpy).
ENVELOPES = {
    "kserve": "pyserve.worker.envelopes.kserve:KServeEnvelope",
    "kservev2": "pyserve.worker.envelopes.kservev2:KServev2Envelope",
}


def envelope_class(name: str) -> type:
    if name not in ENVELOPES:
        raise ValueError(f"service_envelope={name!r} is not an envelope pyserve has "
                         f"({', '.join(ENVELOPES)})")
    module, _, cls = ENVELOPES[name].partition(":")
    return getattr(importlib.import_module(module), cls)
