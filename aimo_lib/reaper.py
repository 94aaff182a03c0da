"""Child processes that must not outlive their owner.

vLLM runs its EngineCore and workers as processes of their own. When the owner ends without
its atexit handlers (SIGKILL, os._exit, a kernel restart, a test runner's timeout) they live
on, spinning at 60-75% CPU and holding gigabytes each, and every figure measured meanwhile is
wrong. A model server started for tests or benchmarks has the same problem.

    before = descendants()
    ...start the engine or server...
    guard = Reaper(descendants() - before)  # a watchdog kills them once this process is gone
    ...
    guard.stop()  # at close(): kill what the graceful shutdown left, stop the watchdog

The watchdog is a tiny process of its own (a new session, so signals aimed at the owner's group
miss it) that polls its parent pid: when the owner dies it is re-parented, and it kills the
watched processes and their children. Linux only (it reads /proc); elsewhere it does nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

__all__ = ["Reaper", "cmdline", "descendants", "kill_tree", "spawned_since"]

_PROC = "/proc"


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process; None if it is gone."""
    try:
        with open(f"{_PROC}/{pid}/stat", encoding="utf-8", errors="replace") as f:
            rest = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces and ")"
    except (OSError, IndexError):
        return None
    if rest[0] == "Z":  # a zombie has already let go of everything
        return None
    return int(rest[1]), int(rest[19])


def descendants(pid: int | None = None) -> set[int]:
    """Every live process below `pid` (default: this one)."""
    root = os.getpid() if pid is None else pid
    if not os.path.isdir(_PROC):
        return set()
    children: dict[int, list[int]] = {}
    for name in os.listdir(_PROC):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            children.setdefault(st[0], []).append(int(name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def spawned_since(before: set[int], pid: int | None = None) -> set[int]:
    """The processes below `pid` (default: this one) started since `before` (its descendants
    then) was taken, through new processes only: what a process that existed before forked
    meanwhile (a sandbox worker's code run) is that process's, not the newcomer's."""
    root = os.getpid() if pid is None else pid
    new = descendants(root) - set(before)
    parents = {p: st[0] for p in new if (st := _stat(p)) is not None}
    ours = {root}
    grew = True
    while grew:  # parents first: a child is counted once its parent is
        grown = {p for p, parent in parents.items() if parent in ours} - ours
        ours |= grown
        grew = bool(grown)
    return ours - {root}


def kill_tree(pids, grace_s: float = 3.0) -> None:
    """SIGTERM the processes and their children, then SIGKILL whatever is left after grace_s."""
    targets = set(pids)
    for pid in list(targets):
        targets |= descendants(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in targets:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        end = time.monotonic() + (grace_s if sig == signal.SIGTERM else 1.0)
        while time.monotonic() < end and any(_stat(p) is not None for p in targets):
            time.sleep(0.05)


# The watchdog's whole program: wait for the owner to go, then kill the watched processes
# (those that are still the processes recorded: same pid, same start time).
_WATCHDOG = """
import os, sys, time
owner, ticks = int(sys.argv[1]), sys.argv[2:]
while os.getppid() == owner:
    time.sleep(0.5)
from aimo_lib.reaper import _stat, kill_tree
same = [int(p) for p, t in (x.split(":") for x in ticks) if (_stat(int(p)) or (0, -1))[1] == int(t)]
kill_tree(same)
"""


def cmdline(pid: int) -> str:
    """A process's command line ("" if it is gone); vLLM names its own `VLLM::EngineCore`,
    `VLLM::Worker`."""
    try:
        with open(f"{_PROC}/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _shared(pid: int) -> bool:
    """multiprocessing's resource tracker: started by whoever first needs it, shared by the
    whole process, and gone by itself when its owner is (killing it leaks semaphores)."""
    return "multiprocessing.resource_tracker" in cmdline(pid)


class Reaper:
    """Kills `pids` (and their children) when this process dies, or at stop(). With
    watch=False no watchdog is started: stop() still kills them (those that are still the
    processes recorded), for an owner that keeps a watchdog of its own or needs none."""

    def __init__(self, pids, watch: bool = True):
        self.pids = {p: st[1] for p in pids if (st := _stat(p)) is not None and not _shared(p)}
        self._watchdog = None
        if self.pids and watch:
            here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                [here, *filter(None, [os.environ.get("PYTHONPATH")])])}
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(os.getpid()),
                 *(f"{p}:{t}" for p, t in self.pids.items())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, env=env)

    def alive(self) -> list[int]:
        """The watched processes still running."""
        return [p for p, t in self.pids.items() if (_stat(p) or (0, -1))[1] == t]

    def stop(self, grace_s: float = 3.0) -> None:
        """Kill the watched processes still running, and the watchdog."""
        kill_tree(self.alive(), grace_s)
        self.release()

    def release(self) -> None:
        """Stop watching: the watchdog ends, the processes are left as they are (another
        Reaper has taken them over)."""
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
