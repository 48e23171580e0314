"""The service's own wording for a request body that cannot be decoded as JSON.

Litestar hands msgspec's error text through (``SerializationException(str(msgspec_error))``), and that text
changes between msgspec releases (0.23 says "Invalid UTF-8 encoded string" where 0.19 said "JSON is malformed").
An API's answer to bad input must not change under it, so the body is checked here first: the encoding is
checked with Python's own decoder, and a JSON syntax error is described from what we can locate ourselves.
"""

from __future__ import annotations

import json
import re

_BYTE = re.compile(r"\(byte (\d+)\)")


class BodyNotJSON(ValueError):
    """The request body is not UTF-8 JSON; the message names what is wrong and where."""


def check_utf8(body: bytes) -> None:
    """Raise BodyNotJSON naming the first byte that is not UTF-8."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyNotJSON(
            f"the request body is not valid JSON: it is not UTF-8 encoded (byte {exc.start} of {len(body)} "
            f"is {body[exc.start]:#04x}, {exc.reason}); send UTF-8 JSON"
        ) from None


def describe_syntax_error(body: bytes, decoder_message: str) -> str:
    """Our description of why ``body`` (valid UTF-8) is not JSON. ``decoder_message`` is used only to find the
    position when our own check cannot (msgspec also refuses what the standard library accepts, such as NaN)."""
    text = body.decode("utf-8")
    try:
        json.loads(text)
    except RecursionError:
        return "the request body is not valid JSON: it is nested too deeply"
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            return f"the request body is not valid JSON: it ends early, truncated at character {exc.pos}"
        return f"the request body is not valid JSON: {exc.msg.lower()} at line {exc.lineno}, column {exc.colno}"
    except ValueError:  # an integer literal longer than Python converts
        pass
    if "nest" in decoder_message.lower() or "depth" in decoder_message.lower():
        return "the request body is not valid JSON: it is nested too deeply"
    where = _BYTE.search(decoder_message)
    at = f" at byte {where.group(1)}" if where else ""
    return (
        f"the request body is not valid JSON{at}: NaN, Infinity, lone UTF-16 surrogates and numbers out of range "
        "are not allowed"
    )
