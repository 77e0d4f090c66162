"""Hostile config input (issue 12): `citygate check` answers FILE:LINE:COL: message and exit 2.

Each case is a file a careless or hostile hand could write; before the fix each one ended in
a traceback (OverflowError, ValueError, RecursionError, "embedded null byte"), a read that
never ends (/dev/zero, a FIFO), a walk through the whole disk (``/usr/**``) or a check that
said OK for a config the agent then crashed on. They run through the real CLI entry point,
in process, with the built-in drivers.
"""

from __future__ import annotations

import os
import stat
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygate import registry
from citygate.cli import main
from citygate.config import (
    CONFIG_MAX_BYTES,
    INCLUDE_MAX_ENTRIES,
    MAX_DEPTH,
    MAX_PROBLEMS,
    SECRET_MAX_BYTES,
    ConfigError,
    load,
    parse_duration,
    parse_size,
)
from citygate.drivers.api import show_value

GATEWAY = '[gateway]\nid = "gw-1"\n'
BLE = '[[device]]\nid = "env-1"\ndriver = "ble"\naddress = "A4:C1:38:5B:0F:21"\n'


def where(text: str, needle: str) -> tuple[int, int]:
    """(line, column) of the first ``needle`` in ``text``, counted here, not by tomlpos."""
    offset = text.index(needle)
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run `citygate check -c PATH`: its error lines (exit status 2, no traceback)."""
    code = main(["check", "-c", str(path)])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[-1].endswith("error(s); nothing was started"), err
    return lines[:-1]


def check_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> tuple[Path, list[str]]:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path, check(path, capsys)


def one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str, message: str
) -> None:
    """``text`` fails with exactly one error, placed on ``needle``, saying ``message``."""
    path, errors = check_text(tmp_path, capsys, text)
    line, col = where(text, needle)
    assert errors == [f"{path}:{line}:{col}: {message}"]


# ------------------------------------------------------------------ numbers

OUT_OF_RANGE = (
    "integer out of range: TOML integers must fit in 64 bits"
    " (-9223372036854775808 to 9223372036854775807)"
)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (GATEWAY + BLE + "interval = " + "9" * 400 + "\n", "9999"),  # OverflowError
        (GATEWAY + "[buffer]\nmax_size = " + "9" * 400 + "\n", "9999"),  # OverflowError
        (GATEWAY + "[buffer]\nmax_size = " + "9" * 5000 + "\n", "9999"),  # int's 4300 digits
        (GATEWAY + "[mqtt]\nqos = 0x" + "f" * 5000 + "\n", "0xff"),  # no digit limit in hex
        (GATEWAY + "[mqtt]\nmax_batch = 9223372036854775808\n", "9223"),  # 2**63
    ],
)
def test_an_integer_beyond_64_bits_is_placed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    one_error(tmp_path, capsys, text, needle, OUT_OF_RANGE)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1e400", "a duration must be a finite number of seconds, 0 or more, found inf"),
        ("nan", "a duration must be a finite number of seconds, 0 or more, found nan"),
        ("1e-9", "expected from 1ms to 7d, found 1e-09"),
        ('"0.5ms"', 'expected from 1ms to 7d, found "0.5ms"'),
        ('"8d"', 'expected from 1ms to 7d, found "8d"'),
        ("9223372036854775807", f"a duration must be at most 3650d (10 years), found {2**63 - 1}"),
    ],
)  # fmt: skip
def test_an_interval_is_from_1ms_to_7_days(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    text = GATEWAY + BLE + f"interval = {value}\n"
    one_error(tmp_path, capsys, text, value, f'"interval": {message}')


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_size", "1e300", "a size must be at most 1024TiB, found 1e+300"),
        ("max_size", '"2000TiB"', 'a size must be at most 1024TiB, found 2000TiB'),
        ("max_size", "-1e400", "a size must be a number of bytes, 0 or more, found -inf"),
        ("max_age", "1e300", "a duration must be at most 3650d (10 years), found 1e+300"),
    ],
)  # fmt: skip
def test_huge_sizes_and_durations_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str, message: str
) -> None:
    text = GATEWAY + f"[buffer]\n{key} = {value}\n"
    one_error(tmp_path, capsys, text, value, f'"{key}": {message}')


def test_parse_duration_and_size_take_any_integer() -> None:
    with pytest.raises(ValueError, match="finite number of seconds, 0 or more, found an integer"):
        parse_duration(10**400)
    with pytest.raises(ValueError, match=r"0 or more, found an integer of 20001 bits"):
        parse_size(-(16**5000))
    with pytest.raises(ValueError, match="at most 1024TiB"):
        parse_size(2**51)
    assert parse_size(2**50) == 2**50


# ------------------------------------------------------------------ nesting


@pytest.mark.parametrize(
    "value", ["[" * 5000 + "]" * 5000, "{a=" * 5000 + "}" * 5000], ids=["arrays", "inline-tables"]
)
def test_values_nested_5000_deep_are_one_placed_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    # RecursionError in tomllib before.
    text = GATEWAY + f"x = {value}\n"
    path, errors = check_text(tmp_path, capsys, text)
    assert len(errors) == 1
    assert errors[0].startswith(f"{path}:3:")
    assert errors[0].endswith(f"nested more than {MAX_DEPTH} levels deep (tables, dotted keys,"
                              " arrays and inline tables inside each other)")  # fmt: skip
    column = int(errors[0].split(":")[2])
    assert MAX_DEPTH < column < 4 * MAX_DEPTH + 10  # near the first level too deep


def test_a_dotted_header_of_20000_parts_is_placed_on_the_first_part_too_deep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 40 kB of file: 8 s and 1.95 GB in the position finder before.
    header = ".".join(f"k{i}" for i in range(20_000))
    text = GATEWAY + f"[{header}]\nx = 1\n"
    registry.factories()  # imported before measuring
    tracemalloc.start()
    try:
        path, errors = check_text(tmp_path, capsys, text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    line, col = where(text, f"k{MAX_DEPTH}.")
    assert errors == [
        f"{path}:{line}:{col}: nested more than {MAX_DEPTH} levels deep"
        " (tables, dotted keys, arrays and inline tables inside each other)"
    ]
    assert peak < 30 * 2**20, f"peak {peak / 2**20:.1f} MiB"


# ------------------------------------------------------------------ strings and paths

NUL = "\\u0000"  # as written in TOML
HAS_NUL = "must not contain a NUL character; found one at character {}"
HAS_CONTROL = "must not contain a control character (U+{:04X}); found one at character {}"
TOO_LONG = "too long: {} characters, at most {}"
ONE_LEVEL = 'expected one topic level, without "/", "#" or "+", found {}'
NO_DOLLAR = (
    'must not start with "$" (topics starting with "$" are the broker\'s own, like $SYS), found {}'
)


@pytest.mark.parametrize(
    ("table", "key", "value", "message"),
    [
        ("gateway", "data_dir", f'"var{NUL}"', HAS_NUL.format(4)),
        ("serial", "port", f'"/dev/tty{NUL}"', HAS_NUL.format(9)),
        ("mqtt", "password_file", f'"pw{NUL}"', HAS_NUL.format(3)),
        ("", "include", f'["d/{NUL}*.toml"]', "[0]: " + HAS_NUL.format(3)),
        ("device", "bindkey_file", f'"{NUL}"', HAS_NUL.format(1)),
        ("gateway", "labels", f'{{ "a{NUL}" = "b" }}', f': key "a\\u0000" {HAS_NUL.format(2)}'),
        ("gateway", "labels", '{ site = "' + "s" * 5000 + '" }', ".site: " + TOO_LONG.format(5000, 4096)),  # noqa: E501
        ("mqtt", "topic_prefix", '"$SYS"', NO_DOLLAR.format('"$SYS"')),
        ("mqtt", "topic_prefix", '"$share"', NO_DOLLAR.format('"$share"')),
        ("mqtt", "topic_prefix", '"a\\tb"', HAS_CONTROL.format(9, 2)),
        ("mqtt", "topic_prefix", '"a\\u0085b"', HAS_CONTROL.format(0x85, 2)),
        ("mqtt", "topic_prefix", f'"c{NUL}"', HAS_NUL.format(2)),
        ("mqtt", "topic_prefix", '"+"', ONE_LEVEL.format('"+"')),
        ("mqtt", "topic_prefix", '"a#"', ONE_LEVEL.format('"a#"')),
        ("mqtt", "topic_prefix", '"a/b"', ONE_LEVEL.format('"a/b"')),
        ("mqtt", "topic_prefix", '"' + "x" * 70_000 + '"', TOO_LONG.format(70_000, 64)),
        ("mqtt", "topic_prefix", '"' + "x" * 65 + '"', TOO_LONG.format(65, 64)),
        ("mqtt", "client_id", f'"cid{NUL}"', HAS_NUL.format(4)),
        ("mqtt", "client_id", '"cid\\r\\n"', HAS_CONTROL.format(13, 4)),
        ("mqtt", "client_id", '"' + "c" * 129 + '"', TOO_LONG.format(129, 128)),
        ("mqtt", "username", f'"u{NUL}"', HAS_NUL.format(2)),
        ("mqtt", "username", '"u\\u001b[2J"', HAS_CONTROL.format(0x1B, 2)),
        ("mqtt", "username", '"' + "u" * 257 + '"', TOO_LONG.format(257, 256)),
        ("mqtt", "password", f'"p{NUL}"', "must not contain a NUL character"),
        ("mqtt", "password", '"p' + "\\u00e9" * 40_000 + '"', "too long: 80001 bytes of UTF-8, at most 65535"),  # noqa: E501
    ],
)  # fmt: skip
def test_strings_that_would_break_a_path_a_topic_or_a_log_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    table: str,
    key: str,
    value: str,
    message: str | None,
) -> None:
    before = {
        "": "",
        "gateway": "",
        "serial": '[[serial]]\nid = "s"\n',
        "mqtt": "[mqtt]\n",
        "device": BLE,
    }[table]
    line = f"{key} = {value}\n"
    text = line + GATEWAY if not table else GATEWAY + before + line
    path, errors = check_text(tmp_path, capsys, text)
    at_line, col = where(text, line)
    col += len(key) + 3 + value.index('"')  # the string (or a label's key) at fault
    if not message.startswith(("[", ":", ".")):
        message = ": " + message
    name, _, message = message.partition(": ")
    assert errors == [f'{path}:{at_line}:{col}: "{key}{name}": {message}']


def test_a_nul_in_data_dir_is_refused_before_the_agent_would_crash_on_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(GATEWAY + f'data_dir = "var{NUL}"\n')
    with pytest.raises(ConfigError) as exc:
        load(path, registry.factories(), environ={})
    assert [(p.line, p.col) for p in exc.value.problems] == [(3, 12)]


# ------------------------------------------------------------------ files


def test_secret_files_that_never_end_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        GATEWAY
        + '[mqtt]\nusername = "u"\npassword_file = "/dev/zero"\n'
        + BLE
        + 'bindkey_file = "/dev/urandom"\n'
    )
    path, errors = check_text(tmp_path, capsys, text)
    line, col = where(text, '"/dev/zero"')
    line2, col2 = where(text, '"/dev/urandom"')
    assert errors == [
        f'{path}:{line}:{col}: "password_file": cannot read /dev/zero: it is not a regular file',
        f'{path}:{line2}:{col2}: "bindkey_file": cannot read /dev/urandom:'
        " it is not a regular file",
    ]


def test_a_config_that_never_ends_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # MemoryError at 2.6 GB before.
    errors = check(Path("/dev/zero"), capsys)
    assert errors == ["/dev/zero:1:1: cannot read the file: it is not a regular file"]


def test_a_fifo_is_refused_without_waiting_for_a_writer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("pw", "ca.pem", "capture.jsonl"):
        os.mkfifo(tmp_path / name)
    text = (
        GATEWAY
        + '[mqtt]\nurl = "mqtts://h"\npassword_file = "pw"\nca_file = "ca.pem"\n'
        + '[ble]\nreplay = "capture.jsonl"\n'
    )
    _, errors = check_text(tmp_path, capsys, text)
    assert [e.split(": ", 1)[1] for e in errors] == [
        f'"password_file": cannot read {tmp_path}/pw: it is not a regular file',
        f'"ca_file": cannot read {tmp_path}/ca.pem: it is not a regular file',
        f'"replay": cannot read {tmp_path}/capture.jsonl: it is not a regular file',
    ]


def test_files_too_large_are_refused_without_being_read_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pw").write_bytes(b"x" * (SECRET_MAX_BYTES + 1))
    (tmp_path / "pw").chmod(0o600)
    (tmp_path / "devices.d").mkdir()
    (tmp_path / "devices.d" / "big.toml").write_bytes(b"#" * (CONFIG_MAX_BYTES + 1))
    text = 'include = ["devices.d/*.toml"]\n' + GATEWAY + '[mqtt]\npassword_file = "pw"\n'
    path, errors = check_text(tmp_path, capsys, text)
    assert errors == [
        f'{path}:5:17: "password_file": cannot read {tmp_path}/pw: it is {SECRET_MAX_BYTES + 1}'
        f" bytes, more than the {SECRET_MAX_BYTES} allowed",
        f"{tmp_path}/devices.d/big.toml:1:1: cannot read the file: it is"
        f" {CONFIG_MAX_BYTES + 1} bytes, more than the {CONFIG_MAX_BYTES} allowed",
    ]


def test_includes_are_read_up_to_2_mib_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "d").mkdir()
    for name in "abc":  # 3/4 MiB each
        (tmp_path / "d" / f"{name}.toml").write_bytes(b"#" * (CONFIG_MAX_BYTES * 3 // 4) + b"\n")
    _, errors = check_text(tmp_path, capsys, 'include = ["d/*.toml"]\n' + GATEWAY)
    assert errors == [
        f"{tmp_path}/d/c.toml:1:1: not read: the config files hold more than 2097152 bytes"
        " (2 MiB) together"
    ]


def test_an_include_glob_walks_a_bounded_number_of_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `include = ["/usr/**/*.none"]` ran for minutes: a tree larger than the budget.
    tree = tmp_path / "tree"
    for d in range(11):
        sub = tree / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(INCLUDE_MAX_ENTRIES // 10):
            (sub / f"f{f}").touch()
    pattern = f"{tree}/**/*.none"
    text = f'include = ["tree/d0/*.none", "{pattern}", "tree/*/*.toml"]\n' + GATEWAY
    path, errors = check_text(tmp_path, capsys, text)
    line, col = where(text, f'"{tree}')
    assert errors == [
        f'{path}:{line}:{col}: "include[1]": {show_value(pattern)} looks through too many'
        f" directory entries (the include globs may look through {INCLUDE_MAX_ENTRIES} in"
        ' all); name the directories to include from, e.g. "devices.d/*.toml"'
    ]


def test_a_recursive_include_does_not_follow_a_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "d" / "x").mkdir(parents=True)
    (tmp_path / "d" / "x" / "loop").symlink_to(tmp_path / "d")
    (tmp_path / "d" / "x" / "dev.toml").write_text(BLE)
    (tmp_path / "gateway.toml").write_text('include = ["d/**/*.toml"]\n' + GATEWAY)
    for path in (tmp_path / "d" / "x" / "dev.toml", tmp_path / "gateway.toml"):
        path.chmod(0o600)
    config = load(tmp_path / "gateway.toml", registry.factories(), environ={})
    assert config.files == (tmp_path / "gateway.toml", tmp_path / "d" / "x" / "dev.toml")


# ------------------------------------------------------------------ many errors


def test_errors_past_the_limit_are_counted_not_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GATEWAY + "[mqtt]\n" + "".join(f"bogus{i} = 1\n" for i in range(MAX_PROBLEMS + 200))
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    code = main(["check", "-c", str(path)])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(err) == MAX_PROBLEMS + 2
    assert err[-2] == f"{path}:1:1: 200 more errors not listed (only the first 1000 found are)"
    assert err[-1] == f"{MAX_PROBLEMS + 200} error(s); nothing was started"


# ------------------------------------------------------------------ anything in, ConfigError out

FRAGMENTS = [
    GATEWAY, BLE, "[mqtt]\n", "[buffer]\n", "[[serial]]\n", 'include = ["*.toml"]\n',
    "interval = ", "max_size = ", "topic_prefix = ", "data_dir = ", "password_file = ",
    '"$SYS"', '"\\u0000"', "9" * 30, "0x" + "f" * 40, "1e400", "nan", "-inf", "[[[[", "]]]]",
    "{a={b={", "}}}", "a.b.c.d.e.f.g.h", " = ", "\n", '"/dev/zero"', "'", '"', "\\", "\r\n",
]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)),
        max_size=30,
    )
)
def test_any_text_loads_or_raises_config_error(parts: list[str]) -> None:
    text = "".join(parts)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "gateway.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        try:
            load(path, registry.factories(), environ={})
        except ConfigError as exc:
            problems = exc.problems
        else:
            return
    assert problems
    assert all(p.line >= 1 and p.col >= 1 and p.message for p in problems)


# ------------------------------------------------------------------ Modbus profile files

MODBUS = '[[device]]\nid = "meter-1"\ndriver = "modbus"\nhost = "127.0.0.1"\nprofile = "{}"\n'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "is not a regular file"),  # /dev/zero
        ("[profile]\nmax_gap = 1" + "0" * 5000 + "\n", "invalid profile: "),
        ("x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ],
    ids=["dev-zero", "5000-digit-integer", "nested-5000-deep"],
)
def test_a_hostile_profile_file_is_an_error_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    if content is None:
        profile = Path("/dev/zero")
    else:
        profile = tmp_path / "hostile.toml"
        profile.write_text(content, encoding="utf-8")
    _, errors = check_text(tmp_path, capsys, GATEWAY + MODBUS.format(profile))
    assert len(errors) == 1 and message in errors[0], errors
