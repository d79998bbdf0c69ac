"""Reading on several cores with the serial order kept: one lane per input file, lanes side by side on a pool.

A lane pulls its file's reads one after another (an uproot iterator is sequential and reuses a basket across
reads), and hands each read's conversion to the pool as soon as it is read, so that the next read is made
while the previous one is converted and consumed, and other files' lanes read at the same time. zlib, lzma,
zstd, lz4 and most of NumPy release the GIL, which is what lets threads use more than one core here. The
consumer takes each lane's parts in order, so the result is the serial one whatever the timing.

Also here, the other threading and memory pieces of the stream: the buffers a file's reads are converted into,
the background thread that keeps a few chunks ready for the consumer, and glibc's settings for the stream's
large arrays.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

END: Any = object()  # what a lane returns once its reads are exhausted

# glibc's mallopt parameters (malloc.h) and the values the stream sets: arrays up to 32 MiB (glibc's largest
# threshold on 64-bit) come from the heap instead of their own mmap, and freed memory is returned to the
# system only past 1 GiB at the top of a heap.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 1 << 30
_malloc_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Have glibc keep the memory of freed arrays for the next ones instead of unmapping it (once a process).

    A read's arrays (uproot's baskets, the converted rows, each block) are a few MiB to ~30 MiB: by default
    glibc maps each into fresh pages and unmaps it when freed, so every block pays its page faults again, and
    with several threads each unmapping also stops the other cores (TLB shootdowns). That was most of the
    system time the stream spent above a bare ``uproot.iterate`` (docs/streaming.md). Memory
    stays bounded by the stream's peak, which the heap then keeps. False where there is no glibc ``mallopt``.
    """
    global _malloc_kept
    if _malloc_kept is None:
        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
        except (OSError, AttributeError):  # not glibc
            _malloc_kept = False
        else:
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            _malloc_kept = bool(
                mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
            )
    return _malloc_kept


def available_cores() -> int:
    """The cores this process may run on (a job's ``taskset``), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class LanePool:
    """The thread pool the lanes share, and the flag that stops them when the consumer goes away."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self.executor = ThreadPoolExecutor(self.threads, thread_name_prefix="read-lane")
        self.closed = threading.Event()

    def lane(self, reads: Iterator[Any], convert: Callable[[Any], Any], ahead: int = 1) -> Lane:
        return Lane(self, reads, convert, ahead)

    def close(self) -> None:
        # Reads already running finish (an uproot read cannot be interrupted); nothing new starts.
        self.closed.set()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> LanePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Lane:
    """One source's converted reads, in order, at most ``ahead`` reads ahead of the one the consumer holds."""

    def __init__(
        self, pool: LanePool, reads: Iterator[Any], convert: Callable[[Any], Any], ahead: int
    ) -> None:
        self._pool = pool
        self._reads = reads
        self._convert = convert
        self._ahead = max(1, ahead)
        self._lock = threading.Lock()
        self._slots: deque[Future[Any]] = deque()  # one per read handed out or under way, in order
        self._reading = False  # a read of this lane is under way: reads of one iterator never overlap
        self._finished = False
        self._fill()

    def next(self) -> Any:
        """The next converted read, or :data:`END`; an error of the read or the conversion is raised here."""
        with self._lock:
            slot = self._slots[0]
        result = slot.result()
        if result is END:
            return END
        with self._lock:
            self._slots.popleft()
        self._fill()
        return result

    def _fill(self) -> None:
        with self._lock:
            busy = self._reading or len(self._slots) >= self._ahead
            if busy or self._finished or self._pool.closed.is_set():
                return
            slot: Future[Any] = Future()
            self._slots.append(slot)
            self._reading = True
        try:
            self._pool.executor.submit(self._read, slot)
        except RuntimeError as err:  # the pool was shut down meanwhile: nobody waits for this slot
            slot.set_exception(err)

    def _read(self, slot: Future[Any]) -> None:
        finished = True
        try:
            item = next(self._reads)
        except StopIteration:
            slot.set_result(END)
        except BaseException as err:  # handed to the consumer, raised where it asks for this read
            slot.set_exception(err)
        else:
            finished = False
            try:
                converting = self._pool.executor.submit(self._convert, item)
            except RuntimeError as err:
                slot.set_exception(err)
            else:
                converting.add_done_callback(lambda done: _forward(done, slot))
        with self._lock:
            self._reading = False
            self._finished = self._finished or finished
        self._fill()


def _forward(done: Future[Any], slot: Future[Any]) -> None:
    if done.cancelled():
        slot.cancel()
    elif done.exception() is not None:
        slot.set_exception(done.exception())
    else:
        slot.set_result(done.result())


class Buffers:
    """One file's ``x`` buffers. A buffer is taken by a read's conversion and given back once the read's parts
    are all in blocks (the blocks copy them): reusing them spares the page faults of fresh memory."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()  # lanes take from the pool's threads and give back from the consumer's

    def take(self, rows: int) -> np.ndarray:
        with self._lock:
            for i, buffer in enumerate(self._free):
                if len(buffer) >= rows:
                    return self._free.pop(i)
        return np.empty((rows, self.dim), dtype=np.float32)

    def give(self, buffer: np.ndarray) -> None:
        with self._lock:
            self._free.append(buffer)


def prefetched(source: Generator[Any, None, None], depth: int) -> Iterator[Any]:
    """Run ``source`` in a thread, ``depth`` chunks ahead; errors surface in the consumer. A consumer that
    stops early closes ``source`` in that thread, which stops its reading threads."""
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(done)
        except BaseException as err:
            buffer.put(err)
        finally:
            source.close()

    thread = threading.Thread(target=produce, name="event-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                buffer.get_nowait()
        thread.join(timeout=5)
