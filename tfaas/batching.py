"""Dynamic batching of one worker's concurrent predict requests, and the count of those requests in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import numpy as np


class InFlight:
    """How many predict requests of this worker are running: the batcher's leader waits for them.

    Used as ``with in_flight: ...`` around a request's model lookup, input checks and model call, so that
    the count is right whichever way the request ends. Calling it reads the count.
    """

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        return self._count

    def __enter__(self) -> InFlight:
        with self._lock:
            self._count += 1
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        with self._lock:
            self._count -= 1


@dataclass
class _Pending:
    matrix: np.ndarray
    result: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


class Batcher:
    """Gathers concurrent requests on one worker into one model call.

    The first request to arrive leads: it waits, at most ``max_wait_s``, while other predict requests of the
    worker are still on their way (``in_flight``), then runs everything queued as one batch and hands each
    caller its rows. A request that is alone runs at once, so batching adds no latency to a lone client.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_rows: int,
        max_wait_s: float,
        in_flight: Callable[[], int],
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self._max_rows = max_rows
        self._max_wait_s = max_wait_s
        self._in_flight = in_flight
        self._on_batch = on_batch or (lambda rows: None)
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._leading = False

    def submit(self, matrix: np.ndarray) -> np.ndarray:
        if self._in_flight() <= 1 and not self._leading:
            # Alone on this worker: nothing to wait for. (A racy read: at worst this request is not batched.)
            result = self._run(matrix)
            self._on_batch(len(matrix))
            return result
        item = _Pending(matrix)
        with self._cond:
            self._queue.append(item)
            self._cond.notify_all()
            while not item.done and self._leading:
                self._cond.wait()
            if item.done:
                return self._result(item)
            self._leading = True
        try:
            while not item.done:
                self._lead()
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()
        return self._result(item)

    def _lead(self) -> None:
        deadline = time.monotonic() + self._max_wait_s
        with self._cond:
            while True:
                rows = sum(len(p.matrix) for p in self._queue)
                remaining = deadline - time.monotonic()
                if rows >= self._max_rows or remaining <= 0 or len(self._queue) >= self._in_flight():
                    break
                self._cond.wait(remaining)
            batch, rows = [], 0
            while self._queue and (not batch or rows + len(self._queue[0].matrix) <= self._max_rows):
                pending = self._queue.pop(0)
                batch.append(pending)
                rows += len(pending.matrix)
        try:
            matrix = batch[0].matrix if len(batch) == 1 else np.concatenate([p.matrix for p in batch])
            result = self._run(matrix)
            self._on_batch(len(matrix))
            offsets = np.cumsum([0] + [len(p.matrix) for p in batch])
            for pending, start, stop in zip(batch, offsets[:-1], offsets[1:], strict=True):
                pending.result = result[start:stop]
        except BaseException as err:
            for pending in batch:
                pending.error = err
        with self._cond:
            for pending in batch:
                pending.done = True
            self._cond.notify_all()

    @staticmethod
    def _result(item: _Pending) -> np.ndarray:
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result
