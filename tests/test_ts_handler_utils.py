"""ts.handler_utils.utils and ts.protocol.otf_message_handler as TorchServe handlers import
them (pyserve.compat), without torchserve installed."""

from __future__ import annotations

import struct

import pytest

from pyserve.compat.ts.handler_utils.utils import import_class
from pyserve.compat.ts.protocol.otf_message_handler import create_predict_response


def test_import_class_finds_a_class_by_its_dotted_name():
    assert import_class("json.JSONDecoder").__name__ == "JSONDecoder"
    assert import_class("JSONDecoder", module_prefix="json").__name__ == "JSONDecoder"


def test_import_class_names_what_it_could_not_find():
    with pytest.raises(ImportError, match="class:Nothing not found in module:json"):
        import_class("json.Nothing")


def test_create_predict_response_writes_torchserves_frame_without_a_context():
    frame = create_predict_response(["hi"], {0: "r1"}, "ok", 200)
    expected = (struct.pack("!i", 200) + struct.pack("!i", 2) + b"ok"
                + struct.pack("!i", 2) + b"r1"
                + struct.pack("!i", 0) + struct.pack("!i", 200) + struct.pack("!i", 0)
                + struct.pack("!i", 0)
                + struct.pack("!i", 2) + b"hi" + struct.pack("!i", -1))
    assert bytes(frame) == expected
