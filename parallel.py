"""ordered_map: a process pool that keeps results in order and memory bounded."""

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor


def ordered_map(fn: Callable, tasks: Iterable[tuple], workers: int, window_per_worker: int = 2) -> Iterator:
    """Yield ``fn(*task)`` for each task, in order, on ``workers`` processes.

    Unlike ``Pool.imap`` (whose feeder drains ``tasks`` eagerly), at most
    ``workers * window_per_worker`` tasks are in flight, so a lazy ``tasks`` iterator
    over a huge input is read only as fast as results are consumed.
    ``workers <= 1`` runs in this process.
    """
    if workers <= 1:
        for task in tasks:
            yield fn(*task)
        return
    with ProcessPoolExecutor(workers) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.submit(fn, *task))
            if len(pending) >= workers * window_per_worker:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
