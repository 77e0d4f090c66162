"""Find where keys and values sit in a TOML document.

``tomllib`` parses TOML but forgets where things were written. :func:`locate`
scans a document (one that ``tomllib`` accepted) once and answers, for a *path*
such as ``("device", 2, "registers", 0, "address")``, the 1-based line and
column of

* :meth:`Locator.key`: the key as written: a bare key's first character, a
  quoted key's opening quote; for a dotted key the part that names the path
  (``b`` in ``a.b = 1``); for an element of an array of tables the last key of
  its ``[[header]]``; for an element of an inline array the element itself;
* :meth:`Locator.value`: the first character of the value (a string's opening
  quote, an array's ``[``, an inline table's ``{``); for a table made by a
  header the header's first ``[``;
* :meth:`Locator.table`: a table's header (``[`` or ``[[``), an inline
  table's ``{``, or the first key that made an implicit table (``a`` of
  ``[a.b]`` or ``a.b = 1``).

Integers in a path index arrays of tables and arrays. A header key that names
an array of tables resolves to its latest element, as TOML says
(``[[device.registers]]`` belongs to the latest ``[[device]]``).

Columns count characters, not bytes; ``\\r\\n`` line ends are handled. A path
that is not found answers the position of its nearest existing parent, and the
document's start for nothing at all: a caller placing an error always gets a
place. Text that is not valid TOML after all ends the scan quietly; what was
found before still answers.
"""

from __future__ import annotations

import bisect
import contextlib
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["DuplicateKey", "KeyPath", "Locator", "Position", "locate"]

Position = tuple[int, int]
"""1-based (line, column)."""

KeyPath = tuple[str | int, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}#\r\n")


@dataclass(frozen=True, slots=True)
class DuplicateKey:
    """A key set twice (text ``tomllib`` rejects): where each one is."""

    path: KeyPath
    first: Position
    second: Position


@dataclass(slots=True)
class Locator:
    """Positions of the keys, values and tables of one document."""

    _line_starts: list[int]
    # Character offsets by path, filled in by the scanner as it reads the document.
    keys_at: dict[KeyPath, int] = field(default_factory=dict)
    values_at: dict[KeyPath, int] = field(default_factory=dict)
    tables_at: dict[KeyPath, int] = field(default_factory=dict)
    duplicates: list[DuplicateKey] = field(default_factory=list)
    """Keys set twice, in document order (only found in invalid text)."""

    def key(self, path: Sequence[str | int]) -> Position:
        """Where the key of ``path`` is written (or its nearest parent's)."""
        return self._nearest(self.keys_at, tuple(path))

    def value(self, path: Sequence[str | int]) -> Position:
        """Where the value of ``path`` starts (or its nearest parent's)."""
        return self._nearest(self.values_at, tuple(path))

    def table(self, path: Sequence[str | int]) -> Position:
        """Where the table ``path`` is declared (or its nearest parent table)."""
        return self._nearest(self.tables_at, tuple(path))

    def __contains__(self, path: object) -> bool:
        """Whether ``path`` itself (not a parent) was found."""
        return path in self.values_at

    def position(self, offset: int) -> Position:
        """The (line, column) of a character offset into the text."""
        line = bisect.bisect_right(self._line_starts, offset) - 1
        return line + 1, offset - self._line_starts[line] + 1

    def _nearest(self, offsets: dict[KeyPath, int], path: KeyPath) -> Position:
        for length in range(len(path), 0, -1):
            offset = offsets.get(path[:length])
            if offset is not None:
                return self.position(offset)
        return 1, 1


def locate(text: str) -> Locator:
    """Scan ``text`` (a TOML document) and map its paths to positions."""
    line_starts = [0]
    line_starts.extend(index + 1 for index, char in enumerate(text) if char == "\n")
    scanner = _Scanner(text, Locator(line_starts))
    with contextlib.suppress(_NotToml):
        scanner.document()
    return scanner.found


class _NotToml(Exception):
    """The text is not TOML where the scanner stands."""


class _Scanner:
    def __init__(self, text: str, found: Locator) -> None:
        self.text = text
        self.pos = 0
        self.found = found
        self.array_table_sizes: dict[KeyPath, int] = {}

    # ------------------------------------------------------------------ characters

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise _NotToml
        self.pos += len(token)

    def skip_spaces(self) -> None:
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def skip_comment(self) -> None:
        if self.peek() == "#":
            end = self.text.find("\n", self.pos)
            self.pos = len(self.text) if end < 0 else end

    def skip_blank(self) -> None:
        """Spaces, comments and line ends."""
        while True:
            self.skip_spaces()
            self.skip_comment()
            if self.peek() in ("\r", "\n"):
                self.pos += 1
            else:
                return

    # ------------------------------------------------------------------ recording

    def implicit(self, path: KeyPath, offset: int) -> None:
        """A table made by mentioning it: the first mention wins."""
        self.found.keys_at.setdefault(path, offset)
        self.found.values_at.setdefault(path, offset)
        self.found.tables_at.setdefault(path, offset)

    def explicit_table(self, path: KeyPath, key_offset: int, offset: int) -> None:
        self.found.keys_at[path] = key_offset
        self.found.values_at[path] = offset
        self.found.tables_at[path] = offset

    # ------------------------------------------------------------------ grammar

    def document(self) -> None:
        table: KeyPath = ()
        while True:
            self.skip_blank()
            if self.pos >= len(self.text):
                return
            if self.peek() == "[":
                table = self.header()
            else:
                self.key_value(table)

    def header(self) -> KeyPath:
        start = self.pos
        is_array = self.text.startswith("[[", self.pos)
        self.pos += 2 if is_array else 1
        parts = self.key()
        self.expect("]]" if is_array else "]")
        path: KeyPath = ()
        for name, offset in parts[:-1]:
            path = (*path, name)
            self.implicit(path, offset)
            size = self.array_table_sizes.get(path)
            if size is not None:
                path = (*path, size - 1)
        name, offset = parts[-1]
        path = (*path, name)
        if is_array:
            index = self.array_table_sizes.get(path, 0)
            self.array_table_sizes[path] = index + 1
            self.found.keys_at.setdefault(path, offset)
            self.found.values_at.setdefault(path, start)
            path = (*path, index)
        self.explicit_table(path, offset, start)
        return path

    def key(self) -> list[tuple[str, int]]:
        """A possibly dotted key: its parts and where each starts."""
        parts: list[tuple[str, int]] = []
        while True:
            self.skip_spaces()
            start = self.pos
            char = self.peek()
            if char == '"':
                self.basic_string()
                try:
                    name = tomllib.loads("k = " + self.text[start : self.pos])["k"]
                except tomllib.TOMLDecodeError as exc:
                    raise _NotToml from exc
            elif char == "'":
                self.literal_string()
                name = self.text[start + 1 : self.pos - 1]
            else:
                while self.peek() in _BARE_KEY_CHARS and self.peek():
                    self.pos += 1
                if self.pos == start:
                    raise _NotToml
                name = self.text[start : self.pos]
            parts.append((name, start))
            self.skip_spaces()
            if self.peek() != ".":
                return parts
            self.pos += 1

    def key_value(self, table: KeyPath) -> None:
        parts = self.key()
        self.expect("=")
        self.skip_spaces()
        path = table
        for name, offset in parts[:-1]:
            path = (*path, name)
            self.implicit(path, offset)
        name, offset = parts[-1]
        path = (*path, name)
        first = self.found.keys_at.get(path)
        if first is not None and path in self.found.values_at:
            self.found.duplicates.append(
                DuplicateKey(path, self.found.position(first), self.found.position(offset))
            )
        self.found.keys_at[path] = offset
        self.value(path)

    def value(self, path: KeyPath) -> None:
        start = self.pos
        self.found.values_at[path] = start
        char = self.peek()
        if char == '"':
            self.basic_string()
        elif char == "'":
            self.literal_string()
        elif char == "[":
            self.array(path)
        elif char == "{":
            self.inline_table(path)
        else:
            # Numbers, booleans, dates: none holds a delimiter, and a date-time
            # may hold a space, so scan to the next delimiter.
            while self.pos < len(self.text) and self.text[self.pos] not in _SCALAR_END:
                self.pos += 1
            if self.pos == start:
                raise _NotToml

    def array(self, path: KeyPath) -> None:
        self.pos += 1
        index = 0
        while True:
            self.skip_blank()
            if self.peek() == "]":
                self.pos += 1
                return
            element = (*path, index)
            self.found.keys_at[element] = self.pos
            self.value(element)
            index += 1
            self.skip_blank()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "]":
                raise _NotToml

    def inline_table(self, path: KeyPath) -> None:
        self.found.tables_at[path] = self.pos
        self.pos += 1
        while True:
            self.skip_blank()
            if self.peek() == "}":
                self.pos += 1
                return
            self.key_value(path)
            self.skip_blank()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "}":
                raise _NotToml

    def basic_string(self) -> None:
        if self.text.startswith('"""', self.pos):
            self.pos += 3
            while self.pos < len(self.text):
                if self.text[self.pos] == "\\":
                    self.pos += 2
                elif self.text.startswith('"""', self.pos):
                    self.pos += 3
                    self.closing_quotes('"')
                    return
                else:
                    self.pos += 1
            raise _NotToml
        self.pos += 1
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\":
                self.pos += 2
            elif char == '"':
                self.pos += 1
                return
            elif char == "\n":
                break
            else:
                self.pos += 1
        raise _NotToml

    def literal_string(self) -> None:
        if self.text.startswith("'''", self.pos):
            end = self.text.find("'''", self.pos + 3)
            if end < 0:
                raise _NotToml
            self.pos = end + 3
            self.closing_quotes("'")
            return
        end = self.text.find("'", self.pos + 1)
        if end < 0 or "\n" in self.text[self.pos : end]:
            raise _NotToml
        self.pos = end + 1

    def closing_quotes(self, quote: str) -> None:
        """A multi-line string may end with one or two quotes before its delimiter."""
        for _ in range(2):
            if self.peek() == quote:
                self.pos += 1
