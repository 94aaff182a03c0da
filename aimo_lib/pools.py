"""Threads for work with a deadline: pools whose threads all exist before the first
deadline-bound submit(), and daemon threads that may be abandoned."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

_START_WAIT_S = 60.0


def prestarted_pool(workers: int, prefix: str) -> ThreadPoolExecutor:
    """A ThreadPoolExecutor with all its threads started now.

    ThreadPoolExecutor starts a thread inside submit() when none is idle, and Thread.start()
    waits until the new thread runs. On a loaded machine that wait took 1.4 s, and 6 s in a CI
    run, so solve() with a 1 s limit returned seconds late from a plain submit(). Started
    here, outside any time limit, a later submit() only queues."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix=prefix)
    barrier = threading.Barrier(workers + 1)
    for _ in range(workers):  # each waits at the barrier, so the next submit starts a thread
        pool.submit(barrier.wait, _START_WAIT_S)
    try:
        barrier.wait(_START_WAIT_S)
    except threading.BrokenBarrierError:  # threads still missing are started on demand
        pass
    return pool


def in_daemon_thread(fn: Callable[[], object], name: str = "solver-generate") -> Future:
    """fn() on a daemon thread of its own: abandoned when it outlives its deadline, without
    holding up the interpreter's exit (a ThreadPoolExecutor's threads are joined at exit)."""
    future: Future = Future()

    def target() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)

    threading.Thread(target=target, daemon=True, name=name).start()
    return future
