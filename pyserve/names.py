"""What a model name may be: one rule for the management API, archive manifests and the CLI.

The characters are torch-model-archiver's (`^[A-Za-z0-9][A-Za-z0-9_\\-.]*$`); TorchServe's
server itself checks nothing, so a manifest could register `a/b` (no path reaches it: it
reads as model `a` version `b`), a megabyte-long name, or one with a newline that forges
log lines. The length cap is pyserve's: the longest file name most file systems take.
"""

from __future__ import annotations

import re

from pyserve.errors import BadRequest

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]*")
MAX_MODEL_NAME_LENGTH = 255
SHOWN_CHARACTERS = 64  # how much of a refused name the error repeats


class InvalidModelName(BadRequest):
    """Answered 400 BadRequestException by the API; a startup error on the command line."""


def check_model_name(name: object) -> str:
    """`name` if it is a string that follows the rule, else InvalidModelName saying the rule."""
    if isinstance(name, str) and len(name) <= MAX_MODEL_NAME_LENGTH and MODEL_NAME.fullmatch(name):
        return name
    text = name if isinstance(name, str) else repr(name)
    shown = repr(text[:SHOWN_CHARACTERS]) + ("..." if len(text) > SHOWN_CHARACTERS else "")
    raise InvalidModelName(
        f"Invalid model name {shown}: a model name starts with a letter or a digit, holds only "
        f"letters, digits, '_', '-' and '.', and has at most {MAX_MODEL_NAME_LENGTH} characters")
