"""The browser SDK repeats the protocol constants of ``voxgate.wire``: they must agree.

``voxgate.js`` is read as text (no JavaScript engine needed): its ``export const``
scalars and the frozen objects of names are parsed and compared with the Python
module, both ways, so a constant changed or added on one side only fails here.
"""

from __future__ import annotations

import re
import struct
from enum import Enum
from importlib.resources import files
from pathlib import Path

import pytest

from voxgate import wire

SDK = files("voxgate.client").joinpath("web", "voxgate.js").read_text()

_SCALAR = re.compile(r'^export const ([A-Z_]+) = (0x[0-9a-fA-F]+|\d+|"[^"]*");', re.M)
_FROZEN = re.compile(r"^export const ([A-Z_]+) = Object\.freeze\(\{\n(.*?)\n\}\);", re.M | re.S)
_ENTRY = re.compile(r'^\s+([A-Z_]+): (0x[0-9a-fA-F]+|\d+|"[^"]*"),$')


def _value(literal: str) -> int | str:
    if literal.startswith('"'):
        return literal[1:-1]
    return int(literal, 0)


def _scalars() -> dict[str, int | str]:
    return {name: _value(literal) for name, literal in _SCALAR.findall(SDK)}


def _objects() -> dict[str, dict[str, int | str]]:
    objects: dict[str, dict[str, int | str]] = {}
    for name, body in _FROZEN.findall(SDK):
        entries: dict[str, int | str] = {}
        for line in body.splitlines():
            match = _ENTRY.match(line)
            assert match, f"{name}: cannot read {line!r}"
            entries[match[1]] = _value(match[2])
        objects[name] = entries
    return objects


def test_scalars_match() -> None:
    assert _scalars() == {
        "PROTOCOL_VERSION": wire.PROTOCOL_VERSION,
        "SUBPROTOCOL": wire.SUBPROTOCOL,
        "TOKEN_SUBPROTOCOL_PREFIX": wire.TOKEN_SUBPROTOCOL_PREFIX,
        "HEADER_SIZE": wire.HEADER_SIZE,
        "MAGIC": int.from_bytes(wire.MAGIC, "big"),
        "FLAG_END": wire.FLAG_END,
        "FRAMES_CONTENT_TYPE": wire.FRAMES_CONTENT_TYPE,
    }


@pytest.mark.parametrize(
    ("js_name", "names"),
    [
        ("NACK_REASONS", wire.NackReason),
        ("MESSAGE_TYPES", wire.MessageType),
        ("CLOSE_CODES", wire.CloseCode),
    ],
)
def test_named_values_match(js_name: str, names: type[Enum]) -> None:
    assert _objects()[js_name] == {member.name: member.value for member in names}


def test_the_parser_sees_every_constant() -> None:
    # A constant written another way would escape the comparison above.
    exported = set(re.findall(r"^export const ([A-Z_]+) =", SDK, re.M))
    assert exported == set(_scalars()) | set(_objects())


def test_header_layout_is_consistent() -> None:
    assert struct.calcsize(wire.HEADER_FORMAT) == wire.HEADER_SIZE
    assert wire.FLAG_END & wire.RESERVED_FLAGS == 0
    assert wire.FLAG_END | wire.RESERVED_FLAGS == 0xFF


def test_protocol_doc_names_every_value() -> None:
    # docs/protocol.md is the contract: a code added to voxgate.wire must be documented.
    doc = (Path(__file__).parents[3] / "docs" / "protocol.md").read_text()
    for names in (wire.CloseCode, wire.NackReason, wire.MessageType, wire.ErrorCode):
        for member in names:
            assert f"`{member.value}`" in doc or f"| {member.value} |" in doc, member
    for text in (wire.SUBPROTOCOL, wire.TOKEN_SUBPROTOCOL_PREFIX, wire.FRAMES_CONTENT_TYPE):
        assert text in doc
    assert wire.HEADER_FORMAT in doc
