"""JSON objects written as a stream, byte for byte what `json.dumps` writes.

`udx changeset --json` at 1M rows per table and the pass status of a 100k first
pass used to be built as one object, then one string: memory grew with the rows
and the first byte came at the very end. Here an object's top-level values may be
`Stream`s (any iterable of items, consumed once, as late as possible) and the text
goes out in pieces as it is made. With `indent` None the separators are json's
defaults (", " and ": "); with an indent, json's indented layout.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Items per write: few enough to keep memory flat, many enough that the join and
# the write calls cost nothing next to the encoding.
CHUNK = 1000


class Stream:
    """A top-level array whose items are produced while writing. `raw`: the items
    are JSON text already (compact form), written as they are."""

    def __init__(self, items: Iterable[Any], *, raw: bool = False) -> None:
        self.items = items
        self.raw = raw


def iter_json(
    fields: Iterable[tuple[str, Any]], *, indent: int | None = None, default: Any = None
) -> Iterator[str]:
    """The text of the object with these (key, value) fields, in pieces."""
    dumps: Callable[[Any], str] = (
        json.JSONEncoder(default=default).encode
        if indent is None
        else json.JSONEncoder(default=default, indent=indent).encode
    )
    pad = " " * (indent or 0)
    item_pad = pad * 2
    first = True
    empty = True
    for key, value in fields:
        empty = False
        if indent is None:
            yield ("{" if first else ", ") + json.dumps(key) + ": "
        else:
            yield ("{\n" if first else ",\n") + pad + json.dumps(key) + ": "
        first = False
        if not isinstance(value, Stream):
            text = dumps(value)
            yield text if indent is None else text.replace("\n", "\n" + pad)
            continue
        yield from _array(value, dumps, indent, item_pad, pad)
    if empty:
        yield "{}"
    else:
        yield "}" if indent is None else "\n}"


def _array(
    value: Stream, dumps: Callable[[Any], str], indent: int | None, item_pad: str, pad: str
) -> Iterator[str]:
    chunk: list[str] = []
    sep = ", " if indent is None else ",\n" + item_pad
    started = False
    for item in value.items:
        if value.raw:
            text = item
        else:
            text = dumps(item)
            if indent is not None:
                text = text.replace("\n", "\n" + item_pad)
        chunk.append(text)
        if len(chunk) >= CHUNK:
            yield ("[" if indent is None else "[\n" + item_pad) if not started else sep
            started = True
            yield sep.join(chunk)
            chunk = []
    if chunk:
        yield ("[" if indent is None else "[\n" + item_pad) if not started else sep
        started = True
        yield sep.join(chunk)
    if not started:
        yield "[]"
    else:
        yield "]" if indent is None else "\n" + pad + "]"


def write_json(
    out: Any,
    fields: Iterable[tuple[str, Any]],
    *,
    indent: int | None = None,
    default: Any = None,
    transform: Callable[[str], str] | None = None,
) -> None:
    """Write the object to the text stream `out`, then a newline."""
    for piece in iter_json(fields, indent=indent, default=default):
        out.write(transform(piece) if transform else piece)
    out.write("\n")


_NOT_JSON_ASCII = re.compile("[\x7f-\U0010ffff]")


def _ascii_escape(m: re.Match[str]) -> str:
    n = ord(m.group())
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000
    return f"\\u{0xD800 | (n >> 10):04x}\\u{0xDC00 | (n & 0x3FF):04x}"


def ascii_only(text: str) -> str:
    """json's ensure_ascii on JSON text: outside strings it is ASCII already, so every
    DEL or non-ASCII character is inside a string and becomes a \\u escape."""
    if text.isascii() and "\x7f" not in text:
        return text
    return _NOT_JSON_ASCII.sub(_ascii_escape, text)
