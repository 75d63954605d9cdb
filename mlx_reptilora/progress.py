"""A one-line progress display for long loops: redrawn in place on a terminal, a plain line every
few seconds otherwise (CI logs, `tee`), nothing at all in quiet mode."""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    def __init__(self, total: int, start: int = 0, quiet: bool = False, stream=None, every_s: float = 10.0):
        self.total, self.start, self.quiet = total, start, quiet
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.every_s, self.last = every_s, 0.0

    def update(self, done: int, text: str) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0
        line = f"[{done}/{self.total}] {text} | {_duration(now - self.t0)} elapsed, eta {_duration(eta)}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        elif now - self.last >= self.every_s or done == self.total:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last = now

    def log(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
