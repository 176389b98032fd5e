"""Progress of long commands: a bar on a terminal, a compact line a minute in a log."""

from __future__ import annotations

import sys

from tqdm import tqdm

from omni.progress import ProgressLog, progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_a_line_a_minute_and_one_at_the_end(capsys):
    clock = Clock()
    with ProgressLog(20_500, "encode", "img", clock=clock) as bar:
        for _ in range(205):
            clock.now += 1.0  # 100 images a second, 205 seconds
            bar.update(100)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "[encode] 6,000/20,500 img | 1.0 min | 100.0 img/s",
        "[encode] 12,000/20,500 img | 2.0 min | 100.0 img/s",
        "[encode] 18,000/20,500 img | 3.0 min | 100.0 img/s",
        "[encode done] 20,500/20,500 img | 3.4 min | 100.0 img/s",
    ]


def test_failed_work_says_where_it_stopped_and_quiet_work_prints_nothing(capsys):
    clock = Clock()
    try:
        with ProgressLog(None, "eval vq", "img", clock=clock) as bar:
            clock.now = 30.0
            bar.update(7)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert capsys.readouterr().err == "[eval vq stopped] 7 img | 0.5 min | 0.2 img/s\n"
    with ProgressLog(10, "quiet", enabled=False, clock=clock) as bar:
        clock.now = 1000.0
        bar.update(10)
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_tqdms_bar_and_anything_else_the_lines(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress(10, "encode", "img")
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(progress(10, "encode", "img"), ProgressLog)
