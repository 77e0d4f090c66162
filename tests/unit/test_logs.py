"""Logs for journald: a syslog priority prefix and no timestamp under systemd."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from citygate import logs


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_under_systemd_lines_carry_priority_and_no_time(
    restore_root: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    logs.setup("info")
    log = logging.getLogger("citygate.test")
    log.warning("%s: offline after 3 failed polls", "meter-1")
    log.info("meter-1: online again")
    log.debug("not shown at info")
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["<4>meter-1: offline after 3 failed polls", "<6>meter-1: online again"]


def test_at_a_terminal_lines_carry_time_and_level(
    restore_root: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    logs.setup("warning")
    logging.getLogger("citygate.test").error("buffer: disk full")
    [line] = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d ERROR   buffer: disk full", line)
