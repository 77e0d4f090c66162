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

The scan takes time and memory linear in the text, however deep its keys go
(positions live in a tree of paths, not in a table of whole paths). A path
longer than ``max_depth``, or arrays and inline tables nested more than
:data:`MAX_NESTING` deep, end the scan there and set :attr:`Locator.too_deep`,
so that a caller can refuse a document before ``tomllib`` reads it (its cost
grows with depth times size, and its recursion ends in ``RecursionError``).
"""

from __future__ import annotations

import bisect
import contextlib
import tomllib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["MAX_NESTING", "DuplicateKey", "KeyPath", "Locator", "Position", "locate"]

Position = tuple[int, int]
"""1-based (line, column)."""

KeyPath = tuple[str | int, ...]

MAX_NESTING = 100
"""Arrays and inline tables inside each other deeper than this end the scan."""

_MAX_DUPLICATES = 100
"""Keys set twice recorded at most (``tomllib`` stops at the first one)."""

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}#\r\n")


@dataclass(frozen=True, slots=True)
class DuplicateKey:
    """A key set twice (text ``tomllib`` rejects): where each one is."""

    path: KeyPath
    first: Position
    second: Position


class _Node:
    """One path: where its key, value and table start (character offsets, -1 for
    none) and the paths below it. Elements of an inline array are kept as offsets
    only (their key and value start at the same place) unless they are arrays or
    inline tables themselves, which get a node as well."""

    __slots__ = ("array_size", "children", "elements", "key", "name", "parent", "table", "value")

    def __init__(self, parent: _Node | None = None, name: str | int = "") -> None:
        self.parent = parent
        self.name = name
        self.key = -1
        self.value = -1
        self.table = -1
        self.array_size = 0  # elements of the array of tables this path names
        self.children: dict[str | int, _Node] | None = None
        self.elements: array[int] | None = None

    def child(self, name: str | int) -> _Node:
        if self.children is None:
            self.children = {}
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = _Node(self, name)
        return node

    def implicit(self, offset: int) -> None:
        """A table made by mentioning it: the first mention wins."""
        if self.key < 0:
            self.key = offset
        if self.value < 0:
            self.value = offset
        if self.table < 0:
            self.table = offset

    def path(self) -> KeyPath:
        parts: list[str | int] = []
        node: _Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return tuple(reversed(parts))


_Kind = Literal["key", "value", "table"]


@dataclass(slots=True)
class Locator:
    """Positions of the keys, values and tables of one document."""

    _line_starts: list[int]
    _root: _Node = field(default_factory=_Node)
    duplicates: list[DuplicateKey] = field(default_factory=list)
    """Keys set twice, in document order (only found in invalid text; the first 100)."""
    too_deep: int | None = None
    """The character offset of the key or value nested too deep, where the scan stopped."""

    def key(self, path: Sequence[str | int]) -> Position:
        """Where the key of ``path`` is written (or its nearest parent's)."""
        return self._nearest(path, "key")

    def value(self, path: Sequence[str | int]) -> Position:
        """Where the value of ``path`` starts (or its nearest parent's)."""
        return self._nearest(path, "value")

    def table(self, path: Sequence[str | int]) -> Position:
        """Where the table ``path`` is declared (or its nearest parent table)."""
        return self._nearest(path, "table")

    def __contains__(self, path: object) -> bool:
        """Whether ``path`` itself (not a parent) was found."""
        if not isinstance(path, tuple):
            return False
        node = self._root
        for index, part in enumerate(path):
            child = node.children.get(part) if node.children is not None else None
            if child is None:
                return index == len(path) - 1 and _element(node, part) >= 0
            node = child
        return bool(path) and node.value >= 0

    def position(self, offset: int) -> Position:
        """The (line, column) of a character offset into the text."""
        line = bisect.bisect_right(self._line_starts, offset) - 1
        return line + 1, offset - self._line_starts[line] + 1

    def _nearest(self, path: Sequence[str | int], kind: _Kind) -> Position:
        node = self._root
        best = -1
        for part in path:
            child = node.children.get(part) if node.children is not None else None
            if child is None:
                if kind != "table":
                    best = max(best, _element(node, part))
                break
            node = child
            offset = node.key if kind == "key" else node.value if kind == "value" else node.table
            if offset >= 0:
                best = offset
        return self.position(best) if best >= 0 else (1, 1)


def _element(node: _Node, part: object) -> int:
    """The offset of element ``part`` of the inline array ``node``, or -1."""
    elements = node.elements
    if elements is None or not isinstance(part, int) or not 0 <= part < len(elements):
        return -1
    return elements[part]


def locate(text: str, *, max_depth: int | None = None) -> Locator:
    """Scan ``text`` (a TOML document) and map its paths to positions.

    A path of more than ``max_depth`` parts (keys and array indexes) ends the scan.
    """
    line_starts = [0]
    newline = text.find("\n")
    while newline >= 0:
        line_starts.append(newline + 1)
        newline = text.find("\n", newline + 1)
    scanner = _Scanner(text, Locator(line_starts), max_depth)
    with contextlib.suppress(_NotToml):
        scanner.document()
    return scanner.found


class _NotToml(Exception):
    """The text is not TOML where the scanner stands (or nests too deep to go on)."""


class _Scanner:
    def __init__(self, text: str, found: Locator, max_depth: int | None) -> None:
        self.text = text
        self.max_depth = max_depth
        self.pos = 0
        self.found = found
        self.root = found._root  # noqa: SLF001 - the scanner fills in what the Locator answers
        self.nesting = 0

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

    def reached(self, depth: int, offset: int) -> None:
        """A key or value ``depth`` parts deep starts at ``offset``."""
        if self.max_depth is not None and depth > self.max_depth:
            self.found.too_deep = offset
            raise _NotToml

    def nest(self) -> None:
        """One more array or inline table inside the others."""
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            self.found.too_deep = self.pos
            raise _NotToml

    # ------------------------------------------------------------------ grammar

    def document(self) -> None:
        table, depth = self.root, 0
        while True:
            self.skip_blank()
            if self.pos >= len(self.text):
                return
            if self.peek() == "[":
                table, depth = self.header()
            else:
                self.key_value(table, depth)

    def header(self) -> tuple[_Node, int]:
        start = self.pos
        is_array = self.text.startswith("[[", self.pos)
        self.pos += 2 if is_array else 1
        parts = self.key()
        self.expect("]]" if is_array else "]")
        node, depth = self.root, 0
        for name, offset in parts[:-1]:
            node, depth = node.child(name), depth + 1
            self.reached(depth, offset)
            node.implicit(offset)
            if node.array_size:
                node, depth = node.child(node.array_size - 1), depth + 1
        name, offset = parts[-1]
        node, depth = node.child(name), depth + 1
        if is_array:
            index = node.array_size
            node.array_size = index + 1
            if node.key < 0:
                node.key = offset
            if node.value < 0:
                node.value = start
            node, depth = node.child(index), depth + 1
        node.key = offset
        node.value = node.table = start
        self.reached(depth, offset)
        return node, depth

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

    def key_value(self, table: _Node, depth: int) -> None:
        parts = self.key()
        self.expect("=")
        self.skip_spaces()
        node = table
        for name, offset in parts[:-1]:
            node, depth = node.child(name), depth + 1
            self.reached(depth, offset)
            node.implicit(offset)
        name, offset = parts[-1]
        node, depth = node.child(name), depth + 1
        if node.key >= 0 and node.value >= 0 and len(self.found.duplicates) < _MAX_DUPLICATES:
            self.found.duplicates.append(
                DuplicateKey(
                    node.path(), self.found.position(node.key), self.found.position(offset)
                )
            )
        node.key = offset
        self.reached(depth, offset)
        self.value(node, depth)

    def value(self, node: _Node, depth: int) -> None:
        node.value = self.pos
        char = self.peek()
        if char == "[":
            self.array(node, depth)
        elif char == "{":
            self.inline_table(node, depth)
        else:
            self.scalar()

    def scalar(self) -> None:
        """A string, number, boolean or date."""
        start = self.pos
        char = self.peek()
        if char == '"':
            self.basic_string()
        elif char == "'":
            self.literal_string()
        else:
            # Numbers, booleans, dates: none holds a delimiter, and a date-time
            # may hold a space, so scan to the next delimiter.
            while self.pos < len(self.text) and self.text[self.pos] not in _SCALAR_END:
                self.pos += 1
            if self.pos == start:
                raise _NotToml

    def array(self, node: _Node, depth: int) -> None:
        self.nest()
        self.pos += 1
        elements = node.elements = array("q")
        if node.children:  # the same key written before (invalid): forget its elements
            node.children = {k: v for k, v in node.children.items() if not isinstance(k, int)}
        while True:
            self.skip_blank()
            if self.peek() == "]":
                self.pos += 1
                self.nesting -= 1
                return
            start = self.pos
            elements.append(start)
            self.reached(depth + 1, start)
            if self.peek() in ("[", "{"):
                element = node.child(len(elements) - 1)
                element.key = start
                self.value(element, depth + 1)
            else:
                self.scalar()
            self.skip_blank()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "]":
                raise _NotToml

    def inline_table(self, node: _Node, depth: int) -> None:
        self.nest()
        node.table = self.pos
        self.pos += 1
        while True:
            self.skip_blank()
            if self.peek() == "}":
                self.pos += 1
                self.nesting -= 1
                return
            self.key_value(node, depth)
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
