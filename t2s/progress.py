"""A small progress bar on stderr for long work (the core does not depend on click)."""

from __future__ import annotations

import sys
import time


class Progress:
    """`with Progress(total, "rollout") as bar: bar.advance(ok=True)`.

    Draws in place on a terminal; elsewhere prints a line every tenth of the way, so logs of
    long runs still show that work is moving.
    """

    def __init__(self, total: int, label: str, stream=None, enabled: bool = True):
        self.total = max(total, 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and self.total > 0
        self.done = 0
        self.failed = 0
        self.started = time.monotonic()
        self._last_reported_tenth = -1
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def advance(self, ok: bool = True, note: str = "") -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        remaining = (self.total - self.done) / rate if rate > 0 else 0.0
        width = 24
        filled = int(width * self.done / self.total)
        line = (
            f"{self.label:<10} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
            f"  failed {self.failed}  {elapsed:5.0f}s elapsed, ~{remaining:4.0f}s left"
            + (f"  {note}" if note else "")
        )
        if self._tty:
            self.stream.write("\r" + line[:160].ljust(100))
        else:
            tenth = (10 * self.done) // self.total
            if tenth == self._last_reported_tenth:
                return
            self._last_reported_tenth = tenth
            self.stream.write(line + "\n")
        self.stream.flush()
