"""application/x-www-form-urlencoded bodies, read as TorchServe reads them (netty's
HttpPostStandardRequestDecoder), so that a handler gets the same fields and the same bytes.

- Fields are split at "&"; a field's name ends at its first "=". A name followed by "&"
  without an "=" is a field with an empty value; one at the very end of the body is no field.
- A value is bytes: "%XX" is the byte XX, "+" a space, every other byte itself. Values need
  not be UTF-8: any byte, escaped or not, reaches the handler as it was sent.
- A value ends at "&", at a line break (LF or CRLF, which also ends the form: what follows
  is ignored) or with the body (a CR that ends the body is dropped).
- A name is text: decoded as a value is, read as UTF-8 (an invalid byte becomes U+FFFD),
  then CR and tab become spaces, LF is dropped and surrounding whitespace stripped.

Where TorchServe refuses the whole request (500 ErrorDataDecoderException), pyserve serves
it: a "%" not followed by two hex digits stays as it was written, a CR inside a value is
kept, and a field whose name is empty is left out.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_to_bytes

NAME_WHITESPACE = re.compile(r"^[ \t\n\x0b\f\r]+|[ \t\n\x0b\f\r]+\Z|\n")  # Java's \s
NAME_CONTROL = re.compile(r"[\r\t]")


def field_name(raw: bytes) -> str:
    text = unquote(raw.decode("utf-8", errors="replace").replace("+", " "), errors="replace")
    return NAME_WHITESPACE.sub("", NAME_CONTROL.sub(" ", text))


def field_value(raw: bytes) -> bytes:
    return unquote_to_bytes(raw.replace(b"+", b" "))


def _value_end(body: bytes, start: int) -> tuple[int, int]:
    """(where the value that starts at `start` ends, where the next field starts; -1: none)."""
    ampersand = body.find(b"&", start)
    newline = body.find(b"\n", start, ampersand if ampersand >= 0 else len(body))
    if newline >= 0:
        return (newline - 1 if newline > start and body[newline - 1] == 0x0D else newline), -1
    if ampersand >= 0:
        return ampersand, ampersand + 1
    return (len(body) - 1 if body.endswith(b"\r") else len(body)), -1


def parse_form(body: bytes) -> list[tuple[str, bytes]]:
    """(name, value) for each field, in order."""
    fields: list[tuple[str, bytes]] = []
    start = 0
    while 0 <= start < len(body):
        equals, ampersand = body.find(b"=", start), body.find(b"&", start)
        if equals < 0 and ampersand < 0:
            break  # a name without "=" that ends the body
        if ampersand >= 0 and (equals < 0 or ampersand < equals):
            name, value, start = field_name(body[start:ampersand]), b"", ampersand + 1
        else:
            end, following = _value_end(body, equals + 1)
            name, value, start = field_name(body[start:equals]), field_value(body[equals + 1:end]), following
        if name:
            fields.append((name, value))
    return fields
