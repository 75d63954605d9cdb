"""A one-line progress display for long loops, through tqdm: redrawn in place on a terminal, a plain
line every few seconds otherwise (CI logs, `tee`: tqdm's carriage returns would pile up on one
line there), nothing at all in quiet mode."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

FORMAT = "[{n}/{total}] {desc} | {elapsed} elapsed, eta {remaining}"


class Progress:
    def __init__(self, total: int, start: int = 0, quiet: bool = False, stream=None, every_s: float = 10.0):
        self.total, self.quiet = total, quiet
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.every_s, self.last = every_s, 0.0
        self.bar = tqdm(total=total, initial=start, file=self.stream, bar_format=FORMAT, dynamic_ncols=True,
                        disable=quiet or not self.tty)
        self.start = start

    @property
    def start(self) -> int:
        return self._start

    @start.setter
    def start(self, done: int) -> None:
        """Where a resumed loop starts: the rate and eta count only what is done from there."""
        self._start = done
        self.bar.reset()  # restarts tqdm's clock
        self.bar.n = self.bar.initial = self.bar.last_print_n = done  # done before this run: not its rate
        self.bar.refresh()
        self.t0 = time.perf_counter()

    def update(self, done: int, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            self.bar.set_description_str(text, refresh=False)
            self.bar.update(done - self.bar.n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s or done == self.total:
            line = tqdm.format_meter(done, self.total, now - self.t0, prefix=text, bar_format=FORMAT,
                                     initial=self._start)
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last = now

    def log(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            self.bar.write(text, file=self.stream)  # clears the bar, writes the line, redraws the bar
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        self.bar.close()
