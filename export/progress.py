"""Progress bars for long work (tqdm): on stderr, never on stdout, where commands print what
other programs parse; shown only when stderr is a terminal, and off everywhere with
`python -m export --no-progress`.
"""
import sys
import threading

from tqdm import tqdm

_shown = True


def show(on):
    """Turn every later bar on (where stderr is a terminal) or off."""
    global _shown
    _shown = bool(on)


def bar(iterable=None, *, total=None, desc=None, unit="it", mininterval=1.0, hide=False, **kw):
    """A tqdm bar on stderr; disabled when stderr is no terminal (tqdm's disable=None), after
    show(False) or with `hide` (e.g. on all but the first of several processes)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=mininterval,
                disable=True if hide or not _shown else None, **kw)


class Counter:
    """A bar that threads may advance together (tqdm's update is not atomic)."""

    def __init__(self, bar_):
        self.bar = bar_
        self.lock = threading.Lock()

    def update(self, n=1):
        with self.lock:
            self.bar.update(n)
