"""Single-threaded CPU workers for work split into independent pieces (bands of rows).

Intra-op threads split every operation in equal static shares, and the operation ends when its
slowest thread does. When another process takes one of the cores, the thread that shares it
runs at a fraction of the speed and every operation waits for it: on 2 cores with one busy
loop beside it, the banded blocks of a 1024 px image slowed 2.8x. Pieces handed to workers that
each run their operations on one thread balance by themselves instead: a worker on a
contended core finishes fewer pieces. Measured on 2 cores with a busy loop beside it (the
1024 px banded blocks of one image): 2.0-2.5 s on intra-op threads, 1.0-1.1 s on 2 workers.

The pool has as many workers as the calling thread has intra-op threads, when that is 2 to
:data:`MAX_WORKERS`; more cores are better used by intra-op threads inside larger pieces, so
above that (and with one thread) the pieces run in order on the calling thread. A piece never
hands work to the pool itself (it runs in order instead), so pieces cannot wait on each other.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from .nnpack import make_pool_single_threaded

MAX_WORKERS = 4

_pools: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()
_local = threading.local()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``n`` intra-op threads on this thread inside the block, the count before it afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def worker_count(device: torch.device | str = "cpu") -> int:
    """Workers the pieces of a call from this thread run on (0: in order on this thread)."""
    if torch.device(device).type != "cpu" or getattr(_local, "in_worker", False):
        return 0
    threads = torch.get_num_threads()
    return threads if 2 <= threads <= MAX_WORKERS else 0


def _start_worker(ready: threading.Barrier) -> None:
    _local.in_worker = True
    torch.set_num_threads(1)
    torch.get_num_threads()  # fixes this thread's count now (torch reads the global one lazily)
    make_pool_single_threaded()  # so that the workers' NNPACK calls run side by side (models/nnpack.py)
    ready.wait()


def _pool(n: int) -> ThreadPoolExecutor:
    with _lock:
        pool = _pools.get(n)
        if pool is None:
            # torch.set_num_threads in a worker also sets the count new threads start with;
            # the caller's own count is put back once every worker has fixed its own.
            caller = torch.get_num_threads()
            ready = threading.Barrier(n + 1)
            pool = ThreadPoolExecutor(n, thread_name_prefix="pastiche-band", initializer=_start_worker,
                                      initargs=(ready,))
            for _ in range(n):  # one task each, so that all n threads start now
                pool.submit(int)
            ready.wait()
            torch.set_num_threads(caller)
            _pools[n] = pool
        return pool


def run_pieces(piece: Callable, args: Sequence[tuple], device: torch.device | str = "cpu") -> None:
    """``piece(*a)`` for every ``a`` in ``args``, on the workers when there are any (in the
    caller's autograd and inference mode), else in order. The pieces must be independent; the
    first exception raised by one is raised here after all have ended."""
    n = worker_count(device)
    if n == 0 or len(args) < 2:
        for a in args:
            piece(*a)
        return
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def run(a: tuple) -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            piece(*a)

    futures = [_pool(n).submit(run, a) for a in args]
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


__all__ = ["MAX_WORKERS", "run_pieces", "torch_threads", "worker_count"]
