"""Where the command's output goes, and how its log lines look on and off a terminal."""

from __future__ import annotations

import logging
from datetime import datetime

import pytest

from looplane.cli._output import configured_logging

# 2026-12-04 22:06:36 local time.
CREATED = datetime(2026, 12, 4, 22, 6, 36).timestamp()


@pytest.mark.parametrize(
    "on_terminal", [pytest.param(True, id="terminal"), pytest.param(False, id="pipe")]
)
def test_log_lines_show_iso_times_on_and_off_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], on_terminal: bool
) -> None:
    """Rich's own default, ``[12/04/26 22:06:36]``, reads month first or day first by locale."""
    if on_terminal:
        monkeypatch.setenv("FORCE_COLOR", "1")
    record = logging.makeLogRecord(
        {"name": "looplane.test", "levelno": logging.INFO, "levelname": "INFO", "msg": "started"}
    )
    record.created = CREATED

    with configured_logging(logging.INFO):
        handler = logging.getLogger().handlers[-1]
        handler.handle(record)

    assert (type(handler).__name__ == "RichHandler") is on_terminal
    shown = capsys.readouterr().err
    assert "2026-12-04 22:06:36" in shown, shown
    assert "12/04/26" not in shown
