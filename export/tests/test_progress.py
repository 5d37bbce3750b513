"""Progress bars: on stderr only when it is a terminal, never with --no-progress, countable from threads."""
import io
import sys
import threading

import pytest

from export import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def shown_again():
    yield
    progress.show(True)


def run_bar(monkeypatch, stderr, n=3):
    monkeypatch.setattr(sys, "stderr", stderr)
    with progress.bar(total=n, desc="tagging", unit="sentence", mininterval=0) as bar:
        for _ in range(n):
            bar.update(1)
    return stderr.getvalue()


def test_a_bar_shows_on_a_terminal(monkeypatch):
    out = run_bar(monkeypatch, Terminal())
    assert "tagging" in out and "3/3" in out and "sentence" in out


def test_no_bar_when_stderr_is_no_terminal(monkeypatch):
    assert run_bar(monkeypatch, io.StringIO()) == ""


def test_no_bar_after_no_progress_nor_when_hidden(monkeypatch):
    progress.show(False)
    assert run_bar(monkeypatch, Terminal()) == ""
    progress.show(True)
    monkeypatch.setattr(sys, "stderr", Terminal())
    with progress.bar(total=1, hide=True) as bar:
        bar.update(1)
    assert sys.stderr.getvalue() == ""


def test_no_progress_is_a_flag_of_every_command(monkeypatch, capsys):
    from export.__main__ import main

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert main(["--no-progress", "plot"]) == 1  # refused, but after the flag took effect
    assert progress._shown is False


def test_threads_count_every_update(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress.bar(total=800)
    done = progress.Counter(bar)
    threads = [threading.Thread(target=lambda: [done.update(1) for _ in range(100)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bar.n == 800
    bar.close()
    assert "800/800" in sys.stderr.getvalue()
