"""The items of a big JSON file's top-level arrays, one at a time, in bounded memory.

COCO's annotation files are one object with a few huge arrays (``stuff_train2017.json``
is 1.1 GB); ``json.load`` would hold all of it, segmentation polygons included, several
times over. ``stream_arrays(path, {"images": f, "annotations": g})`` reads the file in
chunks and calls ``f(item)`` for every element of ``"images"`` as soon as it is parsed
(with the C scanner of ``json``), skipping the other keys' values. Memory: one chunk plus
the item being parsed; an item (or a skipped value) longer than ``max_item_chars`` is
refused, so a malformed or hostile file cannot make the reader hold it whole.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

CHUNK = 1 << 20
MAX_ITEM_CHARS = 64 << 20
_WHITESPACE = " \t\n\r"


class JSONStreamError(ValueError):
    """The file is not the JSON object the reader expects, or an item is too large."""


class _Reader:
    def __init__(self, f, path: Path, max_item_chars: int):
        self.f, self.path, self.max_item = f, path, max_item_chars
        self.buf, self.pos, self.eof, self.consumed = "", 0, False, 0
        self.decoder = json.JSONDecoder()

    def error(self, message: str) -> JSONStreamError:
        return JSONStreamError(f"{self.path}: {message} (near character {self.consumed + self.pos})")

    def fill(self) -> bool:
        """Read one more chunk; False at the end of the file."""
        if self.eof:
            return False
        chunk = self.f.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        if self.pos:
            self.consumed += self.pos
            self.buf, self.pos = self.buf[self.pos:], 0
        self.buf += chunk
        return True

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise self.error(f"expected {' or '.join(repr(x) for x in chars)}, found {c or 'the end of the file'!r}")
        self.pos += 1
        return c

    def value(self) -> Any:
        """The next JSON value, read whole (at most max_item_chars characters)."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                # an incomplete value at the end of the buffer: read on, unless it is too long already
                if len(self.buf) - self.pos > self.max_item:
                    raise self.error(f"a value longer than {self.max_item} characters") from None
                if not self.fill():
                    raise self.error(f"not valid JSON: {e.msg}") from None
                continue
            # a number may be cut by the chunk boundary ("12" of "123"): make sure it ended
            if end == len(self.buf) and not self.eof and self.fill():
                continue
            if end - self.pos > self.max_item:
                raise self.error(f"a value longer than {self.max_item} characters")
            self.pos = end
            return value


def _items(r: _Reader, handle: Callable[[Any], None]) -> None:
    r.expect("[")
    if r.peek() == "]":
        r.pos += 1
        return
    while True:
        handle(r.value())
        if r.expect(",]") == "]":
            return


def stream_arrays(path: str | Path, handlers: dict[str, Callable[[Any], None]],
                  max_item_chars: int = MAX_ITEM_CHARS) -> set[str]:
    """Call ``handlers[key](item)`` for each item of the top-level object's array ``key``,
    in file order; other keys' values are read and dropped. Returns the top-level keys
    found. JSONStreamError names the file and the place when it is not such an object."""
    path = Path(path)
    found: set[str] = set()
    with open(path, encoding="utf-8") as f:
        r = _Reader(f, path, max_item_chars)
        r.expect("{")
        if r.peek() == "}":
            r.pos += 1
        else:
            while True:
                if r.peek() != '"':
                    raise r.error("expected a key")
                key = r.value()
                if key in found:
                    raise r.error(f"the key {key!r} appears twice")
                found.add(key)
                r.expect(":")
                if key in handlers:
                    if r.peek() != "[":
                        raise r.error(f"{key!r} must be an array")
                    _items(r, handlers[key])
                elif r.peek() == "[":     # an array nobody reads (a split's annotations): item by item
                    _items(r, lambda item: None)
                else:
                    r.value()
                if r.expect(",}") == "}":
                    break
        if r.peek():
            raise r.error("content after the top-level object")
    return found
