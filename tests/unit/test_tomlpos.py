"""citygate.tomlpos: exact positions for every TOML syntax, and a generated-document property."""

from __future__ import annotations

import re
import tomllib
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygate.tomlpos import MAX_NESTING, KeyPath, locate


def where(text: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """(line, column) of the n-th ``needle`` in ``text``, counted independently of tomlpos."""
    offset = -1
    for _ in range(occurrence):
        offset = text.index(needle, offset + 1)
    return offset_position(text, offset)


def offset_position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


# ------------------------------------------------------------------ exact positions


def test_table_headers_and_their_keys() -> None:
    text = '# top\n[gateway]\nid = "gw-1"\n\n[ mqtt ]\nurl = "mqtt://x"\n'
    assert tomllib.loads(text)
    loc = locate(text)
    assert loc.table(("gateway",)) == (2, 1)
    assert loc.key(("gateway",)) == (2, 2)
    assert loc.key(("gateway", "id")) == (3, 1)
    assert loc.value(("gateway", "id")) == (3, 6)
    assert loc.table(("mqtt",)) == (5, 1)
    assert loc.key(("mqtt",)) == (5, 3)
    assert loc.value(("mqtt", "url")) == (6, 7)


def test_arrays_of_tables_and_nested_arrays_belong_to_the_latest_element() -> None:
    text = (
        "[[device]]\n"  # 1
        'id = "a"\n'  # 2
        "[[device]]\n"  # 3
        'id = "b"\n'  # 4
        "  [[device.registers]]\n"  # 5
        '  name = "r0"\n'  # 6
        "  [[device.registers]]\n"  # 7
        "  address = 0x0048\n"  # 8
        "  [device.options]\n"  # 9
        "  x = 1\n"  # 10
        "[[device]]\n"  # 11
        'id = "c"\n'  # 12
    )
    data = tomllib.loads(text)
    assert data["device"][1]["registers"][1]["address"] == 0x48
    loc = locate(text)
    assert loc.table(("device", 0)) == (1, 1)
    assert loc.key(("device", 0)) == (1, 3)
    assert loc.value(("device", 1, "id")) == (4, 6)
    assert loc.table(("device", 1, "registers", 0)) == (5, 3)
    assert loc.key(("device", 1, "registers", 1)) == (7, 12)
    assert loc.key(("device", 1, "registers", 0, "name")) == (6, 3)
    assert loc.key(("device", 1, "registers", 1, "address")) == (8, 3)
    assert loc.value(("device", 1, "registers", 1, "address")) == (8, 13)
    assert loc.table(("device", 1, "options")) == (9, 3)
    assert loc.value(("device", 1, "options", "x")) == (10, 7)
    assert loc.table(("device", 2)) == (11, 1)
    assert loc.value(("device", 2, "id")) == (12, 6)


def test_dotted_keys_point_at_their_last_part() -> None:
    text = 'a.b = 1\nsite . "x.y" . z = "q"\n[t]\nu.v.w = true\n'
    assert tomllib.loads(text)["site"]["x.y"]["z"] == "q"
    loc = locate(text)
    assert loc.key(("a",)) == (1, 1)
    assert loc.key(("a", "b")) == (1, 3)
    assert loc.value(("a", "b")) == (1, 7)
    assert loc.key(("site", "x.y")) == (2, 8)
    assert loc.key(("site", "x.y", "z")) == (2, 16)
    assert loc.value(("site", "x.y", "z")) == (2, 20)
    assert loc.table(("site",)) == (2, 1)
    assert loc.key(("t", "u", "v", "w")) == (4, 5)
    assert loc.value(("t", "u", "v", "w")) == (4, 9)


def test_quoted_keys_basic_literal_and_escaped() -> None:
    text = '"a.b" = 1\n\'x\' = 2\n"q\\"uote" = 3\n"\\u00e9t\\u00e9" = 4\n["d.e".\'f\']\ng = 5\n'
    data = tomllib.loads(text)
    assert data["été"] == 4
    loc = locate(text)
    assert loc.key(("a.b",)) == (1, 1)
    assert loc.value(("a.b",)) == (1, 9)
    assert loc.key(("x",)) == (2, 1)
    assert loc.value(("x",)) == (2, 7)
    assert loc.value(('q"uote',)) == (3, 13)
    assert loc.value(("été",)) == (4, 19)
    assert loc.table(("d.e", "f")) == (5, 1)
    assert loc.key(("d.e", "f")) == (5, 8)
    assert loc.value(("d.e", "f", "g")) == (6, 5)


def test_inline_tables() -> None:
    text = 'labels = { site = "plaza", "a b" = { c = 1 }, d.e = [1, 2] }\nafter = 2\n'
    assert tomllib.loads(text)["labels"]["d"]["e"] == [1, 2]
    loc = locate(text)
    assert loc.table(("labels",)) == (1, 10)
    assert loc.value(("labels",)) == (1, 10)
    assert loc.key(("labels", "site")) == where(text, "site")
    assert loc.value(("labels", "site")) == where(text, '"plaza"')
    assert loc.table(("labels", "a b")) == where(text, "{ c")
    assert loc.value(("labels", "a b", "c")) == where(text, "1 }")
    assert loc.key(("labels", "d", "e")) == where(text, "e = [")
    assert loc.value(("labels", "d", "e", 1)) == where(text, "2]")
    assert loc.value(("after",)) == (2, 9)


def test_multiline_arrays_with_comments_and_inline_tables() -> None:
    text = (
        'ports = [  # the ports, [1] "x\n'
        "  502,\n"
        "  # 503, commented out ] {\n"
        "  1502,   # last, with a trailing comma\n"
        "]\n"
        "registers = [\n"
        '  { name = "a", address = 1 },\n'
        '  {name="b",address=2},\n'
        "]\n"
        "nested = [[1, 2], ['x']]\n"
        "empty = []\n"
        "next = 1\n"
    )
    data = tomllib.loads(text)
    assert data["ports"] == [502, 1502]
    loc = locate(text)
    assert loc.value(("ports",)) == (1, 9)
    assert loc.value(("ports", 0)) == (2, 3)
    assert loc.value(("ports", 1)) == (4, 3)
    assert loc.key(("ports", 1)) == (4, 3)
    assert loc.table(("registers", 0)) == (7, 3)
    assert loc.value(("registers", 0, "address")) == (7, 27)
    assert loc.key(("registers", 1, "address")) == (8, 13)
    assert loc.value(("registers", 1, "address")) == (8, 21)
    assert loc.value(("nested", 1, 0)) == (10, 20)
    assert loc.value(("empty",)) == (11, 9)
    assert loc.value(("next",)) == (12, 8)


def test_every_string_form_is_skipped_whole() -> None:
    text = (
        'a = "say \\"hi\\" # not a comment" # comment "\n'  # 1
        "b = 'C:\\path\\' # x\n"  # 2
        'c = """\n'  # 3
        'two "quotes"" and \\""" inside\n'  # 4
        'ends with quotes"""""\n'  # 5
        "d = '''\n"  # 6
        "literal '' with ''quotes'' and \\\n"  # 7
        "'''\n"  # 8
        "e = 'x'  ;  f = 1\n"  # 9: not TOML after the string
    )
    good, bad = text.rsplit("e = ", 1)
    data = tomllib.loads(good + "f = 1\n")
    assert data["c"].endswith('quotes""')
    assert data["d"].startswith("literal ''")
    loc = locate(good + "f = 1\n")
    assert loc.value(("a",)) == (1, 5)
    assert loc.value(("b",)) == (2, 5)
    assert loc.value(("c",)) == (3, 5)
    assert loc.value(("d",)) == (6, 5)
    assert loc.key(("f",)) == (9, 1)
    assert loc.value(("f",)) == (9, 5)
    # Text that is not TOML: what came before still answers, and nothing raises.
    broken = locate(good + "e = " + bad)
    assert broken.value(("d",)) == (6, 5)
    assert broken.value(("e", "zzz")) == (9, 5)


def test_other_scalars_and_a_date_time_with_a_space() -> None:
    text = "t = 1979-05-27 07:32:00Z # when\nf = -1.5e3\nb = true\ni = +1_000\nn = 0o17\nz = 2\n"
    assert tomllib.loads(text)["i"] == 1000
    loc = locate(text)
    assert loc.value(("t",)) == (1, 5)
    assert loc.value(("f",)) == (2, 5)
    assert loc.value(("i",)) == (4, 5)
    assert loc.value(("z",)) == (6, 5)


def test_crlf_tabs_and_comments() -> None:
    text = "# a comment [x]\r\n[gateway]\r\n\tid\t=\t'gw' # c\r\n\r\nport = 5\r\n"
    assert tomllib.loads(text)["gateway"]["port"] == 5
    loc = locate(text)
    assert loc.table(("gateway",)) == (2, 1)
    assert loc.key(("gateway", "id")) == (3, 2)
    assert loc.value(("gateway", "id")) == (3, 7)
    assert loc.value(("gateway", "port")) == (5, 8)


def test_columns_count_characters_not_bytes() -> None:
    text = 'name = "ñandú 😀 €"\nlabels = { "ciudad" = "Málaga", ü = 2 }\n'
    text = text.replace("ü = 2", '"ü" = 2')
    assert tomllib.loads(text)["labels"]["ü"] == 2
    loc = locate(text)
    assert loc.key(("labels", "ü")) == (2, 33)
    assert loc.value(("labels", "ü")) == (2, 39)


def test_missing_paths_fall_back_to_the_nearest_parent() -> None:
    text = '[gateway]\nid = "x"\n[[device]]\nid = "a"\n'
    loc = locate(text)
    assert loc.key(("gateway", "nope")) == (1, 2)
    assert loc.table(("gateway", "id")) == (1, 1)
    assert loc.value(("device", 0, "registers", 3, "unit")) == (3, 1)
    assert loc.value(("device", 7)) == (3, 1)  # the array itself: its first header
    assert loc.key(("mqtt", "url")) == (1, 1)
    assert loc.table(()) == (1, 1)
    assert ("gateway", "id") in loc
    assert ("gateway", "nope") not in loc


def test_a_key_set_twice_is_reported() -> None:
    text = "a = 1\nb = 2\n  a = 3\n"
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(text)
    (duplicate,) = locate(text).duplicates
    assert duplicate.path == ("a",)
    assert duplicate.first == (1, 1)
    assert duplicate.second == (3, 3)


@given(st.text(max_size=200))
def test_any_text_locates_without_raising(text: str) -> None:
    loc = locate(text)
    line, col = loc.value(("a", 0, "b"))
    assert line >= 1
    assert col >= 1


# ------------------------------------------------------------------ generated documents

BARE = re.compile(r"[A-Za-z0-9_-]+")
# TOML's own punctuation often, any other character sometimes.
characters = st.one_of(st.sampled_from("\"'\\\n\t#[]{}=,. a"), st.characters(codec="utf-8"))
keys = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,6}", fullmatch=True), st.text(characters, max_size=5)
)
texts = st.text(characters, max_size=12)
scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    texts,
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
trees = st.recursive(
    st.one_of(scalars, st.lists(scalars, max_size=3)),
    lambda inner: st.one_of(
        st.dictionaries(keys, inner, max_size=3),
        st.lists(st.dictionaries(keys, inner, max_size=3), min_size=1, max_size=2),
    ),
    max_leaves=12,
)
documents = st.dictionaries(keys, trees, max_size=5)


def is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def is_control(char: str) -> bool:
    return ord(char) < 0x20 or ord(char) == 0x7F


def basic_escape(text: str, keep: str = "") -> str:
    out = []
    for char in text:
        if char in keep:
            out.append(char)
        elif char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif is_control(char):
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return "".join(out)


class Renderer:
    """Renders a document in randomly chosen TOML syntaxes, noting where each thing starts."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any], newline: str) -> None:
        self.draw = draw
        self.newline = newline
        self.parts: list[str] = []
        self.length = 0
        self.values: dict[KeyPath, tuple[int, int]] = {}  # leaf -> (offset, length)
        self.keys: dict[KeyPath, int] = {}
        self.tables: dict[KeyPath, int] = {}

    def emit(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def choose(self, *options: str) -> str:
        return str(self.draw(st.sampled_from(options)))

    def text(self) -> str:
        return "".join(self.parts)

    # keys
    def key_part(self, name: str) -> int:
        offset = self.length
        literal_ok = "'" not in name and not any(is_control(c) for c in name)
        styles = (
            ["basic"]
            + (["literal"] if literal_ok else [])
            + (["bare"] if BARE.fullmatch(name) else [])
        )
        style = self.choose(*styles)
        if style == "bare":
            self.emit(name)
        elif style == "literal":
            self.emit(f"'{name}'")
        else:
            self.emit(f'"{basic_escape(name)}"')
        return offset

    def dotted(self, names: tuple[str, ...]) -> int:
        offset = 0
        for index, name in enumerate(names):
            if index:
                self.emit(self.choose(".", " . ", "\t.", ". "))
            offset = self.key_part(name)
        return offset

    # values
    def string(self, text: str) -> str:
        styles = ["basic", "multi_basic"]
        if "'" not in text and not any(is_control(c) and c != "\t" for c in text):
            styles.append("literal")
        if "'''" not in text and not any(is_control(c) and c not in "\t\n" for c in text):
            styles.append("multi_literal")
        style = self.choose(*styles)
        if style == "basic":
            return '"' + basic_escape(text, keep="\t") + '"'
        if style == "literal":
            return "'" + text + "'"
        trimmed_newline = text.startswith("\n") or bool(self.draw(st.booleans()))
        opener = self.newline if trimmed_newline else ""
        if style == "multi_literal":
            return "'''" + opener + text.replace("\n", self.newline) + "'''"
        body: list[str] = []
        quotes = 0
        for char in text:
            if char == '"':
                body.append('\\"' if quotes == 2 else '"')
                quotes = 0 if quotes == 2 else quotes + 1
                continue
            quotes = 0
            body.append(self.newline if char == "\n" else basic_escape(char, keep="\t"))
        return '"""' + opener + "".join(body) + '"""'

    def scalar(self, value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            forms = [str(value)]
            if value >= 0:
                forms += [
                    f"0x{value:x}",
                    f"0x{value:X}",
                    f"0o{value:o}",
                    f"0b{value:b}",
                    f"+{value}",
                ]
            if abs(value) >= 10:
                digits = str(abs(value))
                forms.append(("-" if value < 0 else "") + digits[0] + "_" + digits[1:])
            return self.choose(*forms)
        if isinstance(value, float):
            return repr(value)
        assert isinstance(value, str)
        return self.string(value)

    def value(self, value: object, path: KeyPath) -> None:
        if isinstance(value, dict):
            self.inline_table(value, path)
        elif isinstance(value, list):
            self.array(value, path)
        else:
            literal = self.scalar(value)
            self.values[path] = (self.length, len(literal))
            self.emit(literal)

    def array(self, items: list[Any], path: KeyPath) -> None:
        multiline = bool(self.draw(st.booleans()))
        self.emit("[")
        for index, item in enumerate(items):
            if multiline:
                self.emit(self.newline + "  ")
                if self.draw(st.booleans()):
                    self.emit('# a comment ] } "' + self.newline + "\t")
            elif index:
                self.emit(self.choose(" ", "", "  "))
            self.keys[(*path, index)] = self.length
            self.value(item, (*path, index))
            if index < len(items) - 1 or self.draw(st.booleans()):
                self.emit(self.choose(",", " ,"))
            if multiline and self.draw(st.booleans()):
                self.emit(" # after, [x]")
        if multiline:
            self.emit(self.newline)
        self.emit("]")

    def inline_table(self, table: dict[str, Any], path: KeyPath) -> None:
        self.tables[path] = self.length
        self.emit("{")
        first = True
        for name, value in table.items():
            for names, leaf, leaf_path in self.statements(name, value, (*path, name), ()):
                self.emit(" " if first else self.choose(", ", ","))
                first = False
                self.assignment(names, leaf, leaf_path)
        self.emit(" }" if table else "}")

    def statements(
        self, name: str, value: object, path: KeyPath, prefix: tuple[str, ...]
    ) -> list[tuple[tuple[str, ...], object, KeyPath]]:
        """``name = value``, or one dotted ``name.child = …`` per member of a table."""
        names = (*prefix, name)
        if isinstance(value, dict) and value and self.draw(st.booleans()):
            out = []
            for child, child_value in value.items():
                out += self.statements(child, child_value, (*path, child), names)
            return out
        return [(names, value, path)]

    def assignment(self, names: tuple[str, ...], value: object, path: KeyPath) -> None:
        self.keys[path] = self.dotted(names)
        self.emit(self.choose(" = ", "=", "\t= ", " =  "))
        self.value(value, path)

    def body(self, table: dict[str, Any], path: KeyPath, headers_only: bool = False) -> None:
        later: list[tuple[str, object]] = []
        for name, value in table.items():
            if isinstance(value, dict) and (headers_only or self.draw(st.booleans())):
                later.append((name, value))
                continue
            if is_table_array(value) and (headers_only or self.draw(st.booleans())):
                later.append((name, value))
                continue
            for names, leaf, leaf_path in self.statements(name, value, (*path, name), ()):
                if self.draw(st.booleans()):
                    self.emit(self.choose("", "  # note 'x' [y]") + self.newline)
                self.assignment(names, leaf, leaf_path)
                self.emit(self.choose("", "  # done") + self.newline)
        for name, value in later:
            sub = (*path, name)
            header = tuple(p for p in sub if isinstance(p, str))
            if isinstance(value, dict):
                implicit = bool(value) and all(isinstance(v, dict) for v in value.values())
                if implicit and self.draw(st.booleans()):
                    self.body(value, sub, headers_only=True)
                    continue
                self.tables[sub] = self.length
                self.emit(self.choose("[", "[ "))
                self.keys[sub] = self.dotted(header)
                self.emit(self.choose("]", " ]") + self.choose("", " # t") + self.newline)
                self.body(value, sub)
            else:
                assert isinstance(value, list)
                for index, element in enumerate(value):
                    self.tables[(*sub, index)] = self.length
                    self.emit(self.choose("[[", "[[ "))
                    self.keys[(*sub, index)] = self.dotted(header)
                    self.emit(self.choose("]]", " ]]") + self.newline)
                    self.body(element, (*sub, index))


def value_at(document: Any, path: KeyPath) -> Any:
    for part in path:
        document = document[part]
    return document


@settings(max_examples=300, deadline=None)
@given(documents, st.sampled_from(["\n", "\r\n"]), st.data())
def test_generated_documents_map_every_leaf_key_and_table(
    document: dict[str, Any], newline: str, data: st.DataObject
) -> None:
    renderer = Renderer(data.draw, newline)
    renderer.body(document, ())
    text = renderer.text()
    assert tomllib.loads(text) == document  # the generator writes valid TOML

    loc = locate(text)
    for path, (offset, length) in renderer.values.items():
        assert loc.value(path) == offset_position(text, offset), path
        line, col = loc.value(path)
        start = offset_in(text, line, col)
        assert tomllib.loads("v = " + text[start : start + length])["v"] == value_at(document, path)
    for path, offset in renderer.keys.items():
        assert loc.key(path) == offset_position(text, offset), path
    for path, offset in renderer.tables.items():
        assert loc.table(path) == offset_position(text, offset), path


def offset_in(text: str, line: int, col: int) -> int:
    start = 0
    for _ in range(line - 1):
        start = text.index("\n", start) + 1
    return start + col - 1


# ------------------------------------------------------------------ hostile documents


def test_a_dotted_header_of_20000_parts_costs_linear_memory() -> None:
    # Every prefix of the path was a tuple kept in three tables: 8 s and 1.95 GB before.
    parts = [f"k{i}" for i in range(20_000)]
    text = "[" + ".".join(parts) + "]\nx = 1\n"
    tracemalloc.start()
    try:
        loc = locate(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert loc.key(parts) == where(text, "k19999")
    assert loc.value((*parts, "x")) == (2, 5)
    assert loc.key((*parts[:100], "nope")) == where(text, "k99.")
    assert loc.too_deep is None


def test_max_depth_ends_the_scan_at_the_first_part_too_deep() -> None:
    text = "a = 1\n[b.c.d]\ne.f = 2\n[g]\nh = [[1]]\n"
    assert locate(text, max_depth=5).too_deep is None
    loc = locate(text, max_depth=4)
    assert loc.position(loc.too_deep or 0) == where(text, "f =")
    assert loc.value(("a",)) == (1, 5)  # what came before still answers
    assert loc.value(("g", "h")) == (1, 1)  # what came after was not scanned
    loc = locate(text, max_depth=3)
    assert loc.position(loc.too_deep or 0) == where(text, "e.f")
    loc = locate(text, max_depth=2)
    assert loc.position(loc.too_deep or 0) == where(text, "d]")
    loc = locate("x = [[[[1]]]]\n", max_depth=3)
    assert loc.position(loc.too_deep or 0) == (1, 8)  # x, then 3 arrays: the 4th level is too deep


@pytest.mark.parametrize("value", ["[" * 5000 + "]" * 5000, "{a=" * 5000 + "}" * 5000])
def test_values_nested_5000_deep_end_the_scan_without_recursion_error(value: str) -> None:
    loc = locate("before = 1\nx = " + value + "\n")
    assert loc.too_deep is not None
    line, col = loc.position(loc.too_deep)
    assert line == 2
    assert MAX_NESTING < col < 3 * MAX_NESTING + 10
    assert loc.value(("before",)) == (1, 10)


def test_duplicates_are_recorded_up_to_a_bound() -> None:
    text = "[" + ".".join("k" * 5 for _ in range(1000)) + "]\n" + "a = 1\n" * 5000
    assert len(locate(text).duplicates) == 100
