"""Progress bars: tqdm's own on a terminal; in a log file (nohup, a batch scheduler) a plain
line at most once a minute instead of a carriage-return redraw several times a second."""

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 60.0


class LogLines:
    """A stream for tqdm that writes each redraw as a whole line and drops its clearings."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """tqdm(iterable, **kwargs), in log lines when standard error is not a terminal."""
    if not sys.stderr.isatty():
        kwargs = {"file": LogLines(sys.stderr), "mininterval": LOG_INTERVAL_S, "ncols": 100} | kwargs
    return tqdm(iterable, **kwargs)
