"""The service words undecodable bodies itself, whatever the installed msgspec says (issue: msgspec 0.23 changed
its message for invalid UTF-8 and the API's answer changed with it)."""

from __future__ import annotations

import json

import msgspec
import pytest

from service.http.body import BodyNotJSON, check_utf8, describe_syntax_error


def msgspec_message(body: bytes) -> str:
    with pytest.raises(msgspec.DecodeError) as info:
        msgspec.json.decode(body)
    return str(info.value)


@pytest.mark.parametrize(("body", "byte"), [(b"\xff\xfe\xfd", 0), (b'{"a": "\xc3\x28"}', 7), (b'{"a": 1}\xff', 8)])
def test_invalid_utf8_names_the_encoding_and_the_byte(body: bytes, byte: int) -> None:
    with pytest.raises(BodyNotJSON) as info:
        check_utf8(body)
    message = str(info.value)
    assert "not valid JSON" in message and "UTF-8" in message and f"byte {byte} " in message


@pytest.mark.parametrize("text", ['{"name": "ünïcode ✓"}', '{"emoji": "🦜", "cjk": "漢字"}', '["plain ascii"]'])
def test_valid_utf8_passes(text: str) -> None:
    body = text.encode()
    check_utf8(body)  # raises BodyNotJSON if it refuses
    assert msgspec.json.decode(body) == json.loads(text)  # and the body decodes to what was sent
    with pytest.raises(BodyNotJSON, match=f"byte {len(body)} of {len(body) + 1} "):  # one bad byte more is refused
        check_utf8(body + b"\xff")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"inputs": [1, 2]', ("ends early", "truncated", "character 17")),
        (b'{"inputs": [1, 2}', ("line 1", "column 17")),
        (b'{"x": NaN}', ("NaN",)),
        (b'{"x": 1e999}', ("out of range",)),
        (b'{"x": ' + b"1" * 5000 + b"}", ("out of range",)),
    ],
)
def test_syntax_errors_are_described_in_our_words(body: bytes, words: tuple[str, ...]) -> None:
    message = describe_syntax_error(body, msgspec_message(body))
    assert message.startswith("the request body is not valid JSON")
    for word in words:
        assert word in message, message
    assert msgspec_message(body) not in message  # never the third-party text itself
