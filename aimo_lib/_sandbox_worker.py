"""The process that executes model-written code: a warm fork server (internal).

Started by `aimo_lib.sandbox.Sandbox` as `python -m aimo_lib._sandbox_worker CONFIG_JSON`.
It imports the preloads once, sets up whatever OS isolation the platform allows, then
answers requests from its parent over stdin/stdout (4-byte length + JSON). It never runs
model code itself: every execution happens in a forked child.

Process tree of one execution, at the strongest level ("namespaces"):

    worker    root (or root of its own user namespace); private mount and network namespaces
      holder  unshares a PID namespace for its children, reaps the child, reports its exit
        child PID 1 of that namespace; chrooted into a fresh tmpfs; unprivileged uid (or all
              capabilities dropped); rlimits. When it dies the kernel kills everything left in
              its namespace, so forks, daemons and setsid() escapees die with it.

A session is the same tree whose child loops over cells, keeping its globals.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time

from aimo_lib._sandbox_cell import execute
from aimo_lib._sandbox_io import Capture, Frames, read_some, recv, send
from aimo_lib._sandbox_isolation import (
    CLONE_NEWPID,
    LIBC,
    MNT_DETACH,
    MS_NODEV,
    MS_NOSUID,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    count_processes,
    drop_capabilities,
    kill_uid,
    libc_call,
    setup_isolation,
)

# ---------------------------------------------------------------- the server


class Child:
    """One execution (or session) in flight: its holder, child pid and pipes."""

    def __init__(self, holder: int, uid: int, scratch: str, out_r: int, st_r: int, cmd_w: int):
        self.holder, self.uid, self.scratch = holder, uid, scratch
        self.out_r, self.st_r, self.cmd_w = out_r, st_r, cmd_w
        self.pid = 0  # the child's pid as seen here, reported by the holder
        self.frames = Frames()
        self.exit: int | None = None


class Server:
    def __init__(self, cfg: dict, proto_in: int, proto_out: int):
        self.cfg, self.proto_in, self.proto_out = cfg, proto_in, proto_out
        self.template: dict = {"__name__": "__main__", "__builtins__": __builtins__}
        self.sessions: dict[int, Child] = {}
        self.counter = 0
        self.devnull = os.open(os.devnull, os.O_RDWR)

    # -- start-up
    def start(self) -> None:
        cfg = self.cfg
        for name in cfg["modules"]:
            try:
                __import__(name)
            except ImportError:
                pass  # optional extras; model code importing them will get ImportError
        exec(cfg["preload"], self.template)
        # Warm caches (sympy's above all) here, once, so every forked child starts warm.
        exec(cfg["warmup"], dict(self.template))
        self.iso = setup_isolation(cfg)
        if sys.platform.startswith("linux"):
            # Orphans of executions are reparented here (and reaped), never to the host's init.
            LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.base = tempfile.mkdtemp(prefix="aimo-sandbox-")
        os.chmod(self.base, 0o711)
        send(self.proto_out, {"ready": True, "isolation": self.iso, "scratch": self.base})

    # -- per-execution resources
    def _uid(self) -> int:
        busy = {c.uid for c in self.sessions.values()}
        while True:
            self.counter += 1
            uid = self.cfg["uid_base"] + self.counter % self.cfg["uid_span"]
            if uid not in busy:
                return uid

    def _scratch(self, uid: int) -> str:
        path = os.path.join(self.base, f"x{self.counter}")
        os.mkdir(path, 0o700)
        if self.iso["private_mounts"]:
            opts = f"size={self.cfg['scratch_mb']}m,nr_inodes=4096,mode=0700"
            libc_call("mount", b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                      opts.encode())
        os.mkdir(os.path.join(path, "tmp"), 0o700)
        if self.iso["uid_drop"]:
            for p in (path, os.path.join(path, "tmp")):
                os.chown(p, uid, uid)
        return path

    def _remove_scratch(self, path: str) -> None:
        if self.iso["private_mounts"]:
            try:
                libc_call("umount2", path.encode(), MNT_DETACH)
            except OSError:
                pass
        shutil.rmtree(path, ignore_errors=True)

    # -- spawning
    def spawn(self, code: str | None, cpu_s: int, opts: dict | None = None) -> Child:
        """Fork holder and child. code=None starts a session that waits for cells.
        opts: execute()'s keyword arguments for `code`."""
        uid = self._uid()
        scratch = self._scratch(uid)
        out_r, out_w = os.pipe()
        st_r, st_w = os.pipe()
        cmd_r, cmd_w = os.pipe()
        holder = os.fork()
        if holder == 0:
            try:
                self._holder(code, opts or {}, cpu_s, uid, scratch, out_w, st_w, cmd_r)
            finally:
                os._exit(70)
        for fd in (out_w, st_w, cmd_r):
            os.close(fd)
        for fd in (out_r, st_r):
            os.set_blocking(fd, False)
        return Child(holder, uid, scratch, out_r, st_r, cmd_w)

    def _holder(self, code, opts, cpu_s, uid, scratch, out_w, st_w, cmd_r) -> None:
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if self.iso["pid_namespace"]:
            libc_call("unshare", CLONE_NEWPID)
        target = [0]

        def stop(*_):  # the worker's SIGTERM: kill the child (and its group), then report
            if not target[0]:
                os._exit(0)
            for pid in (target[0], -target[0]):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

        signal.signal(signal.SIGTERM, stop)
        pid = os.fork()
        if pid == 0:
            try:
                self._child(code, opts, cpu_s, uid, scratch, out_w, st_w, cmd_r)
            finally:
                os._exit(71)
        target[0] = pid
        os.close(out_w)
        os.close(cmd_r)
        send(st_w, {"pid": pid})
        status = os.waitpid(pid, 0)[1]  # retried after `stop` runs (PEP 475)
        send(st_w, {"exit": status})
        os._exit(0)

    def _child(self, code, opts, cpu_s, uid, scratch, out_w, st_w, cmd_r) -> None:
        cfg, iso = self.cfg, self.iso
        if sys.platform.startswith("linux"):
            LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os.setsid()  # own process group: the fallback kills it as a group
        os.dup2(self.devnull, 0)  # stdin closed: input() fails at once with EOFError
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)  # one pipe for both keeps stdout and stderr in order
        os.dup2(st_w, 3)
        os.dup2(cmd_r, 4)
        os.closerange(5, 1 << 16)  # above all the worker's protocol pipes
        mb = 1 << 20
        limits = {
            resource.RLIMIT_AS: cfg["memory_mb"] * mb,
            resource.RLIMIT_CPU: cpu_s,
            resource.RLIMIT_FSIZE: cfg["max_file_mb"] * mb,
            resource.RLIMIT_NOFILE: 256,
            resource.RLIMIT_CORE: 0,
        }
        # RLIMIT_NPROC counts every process of the real uid. Each execution has its own uid
        # when uids are dropped; otherwise the count includes the worker's other processes.
        if iso["uid_drop"]:
            limits[resource.RLIMIT_NPROC] = cfg["max_procs"]
        elif iso["user_namespace"]:  # counted per user namespace: this worker's tree only
            limits[resource.RLIMIT_NPROC] = cfg["max_procs"] + 2 * len(self.sessions) + 8
        elif sys.platform.startswith("linux"):
            limits[resource.RLIMIT_NPROC] = cfg["max_procs"] + count_processes(os.getuid())
        for kind, value in limits.items():
            soft, hard = resource.getrlimit(kind)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(kind, (value, value))
        if iso["chroot"]:
            os.chroot(scratch)
            os.chdir("/")
        else:
            os.chdir(scratch)
        if iso["uid_drop"]:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)  # also clears every capability
        elif iso["user_namespace"]:
            drop_capabilities()
        if sys.platform.startswith("linux"):
            LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            # Set after the uid change, which clears it: die with the holder.
            LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        tmp = "/tmp" if iso["chroot"] else os.path.join(scratch, "tmp")
        os.environ.clear()  # the worker's environment was scrubbed already; trim it further
        os.environ.update(PATH="/usr/bin:/bin", HOME=tmp, TMPDIR=tmp, LANG="C.UTF-8")
        tempfile.tempdir = None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        import io

        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), "utf-8", "replace",
                                      write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), "utf-8", "replace",
                                      write_through=True)
        namespace = dict(self.template)
        if code is not None:
            send(3, {"status": execute(code, namespace, **opts)})
            os._exit(0)
        while True:  # session: one cell per frame, globals kept in `namespace`
            msg = recv(4)
            if msg is None:
                os._exit(0)
            status = execute(msg["code"], namespace, msg.get("display", True),
                             msg.get("stderr_on_success", True))
            # Threads cannot be killed, so the cell is not over until they end: a thread
            # that outlives the deadline makes it a timeout, and the process is replaced.
            while len(sys._current_frames()) > 1:
                time.sleep(0.005)
            if iso["pid_namespace"]:
                # PID 1 of its namespace: kill(-1) reaches every process the cell started
                # (and nothing outside); then reap them.
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    while os.waitpid(-1, os.WNOHANG)[0]:
                        pass
                except ChildProcessError:
                    pass
            send(3, {"status": status})

    # -- collecting
    def collect(self, child: Child, timeout: float, limit: int | None = None) -> dict:
        limit = min(limit or self.cfg["max_output_chars"], self.cfg["max_output_chars"])
        cap = Capture(limit)
        hard_cap = max(64 * limit, 1 << 20)
        start = time.monotonic()
        deadline = start + timeout
        status, note = None, ""
        fds = [child.out_r, child.st_r]
        while status is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                status, note = "timeout", f"\nTimeoutError: execution timed out after {timeout:g} s"
                break
            ready, _, _ = select.select(fds, [], [], remaining)
            if child.out_r in ready:
                data = read_some(child.out_r)
                if data is None:
                    fds.remove(child.out_r)
                else:
                    cap.add(data)
                    if cap.total > hard_cap:
                        status, note = "error", "\n[output limit exceeded: execution stopped]"
            if child.st_r in ready:
                data = read_some(child.st_r)
                if data is None:
                    fds.remove(child.st_r)
                    if status is None:
                        status, note = "crashed", _describe_exit(child.exit)
                for frame in child.frames.feed(data or b""):
                    child.pid = frame.get("pid", child.pid)
                    if "exit" in frame:
                        child.exit = frame["exit"]
                        if status is None:
                            status, note = "crashed", _describe_exit(child.exit)
                    if "status" in frame:
                        status = frame["status"]
        # Everything the cell wrote before reporting is already in the pipe: drain it.
        while child.out_r in fds and (data := read_some(child.out_r)):
            cap.add(data)
        text, truncated = cap.text()
        if not text:
            note = note.lstrip("\n")
        alive = status in ("ok", "error") and not note
        return {"status": status, "output": text + note, "truncated": truncated,
                "duration": time.monotonic() - start, "alive": alive}

    def finish(self, child: Child) -> None:
        """Kill the child and everything it started; free its resources."""
        try:
            os.kill(child.holder, signal.SIGTERM)  # the holder kills its child, then exits
        except ProcessLookupError:
            pass
        try:
            os.waitpid(child.holder, 0)
        except ChildProcessError:
            pass
        if not self.iso["pid_namespace"]:
            # No namespace to tear down: kill what is left by uid (when uids are dropped), then
            # every orphan reparented to this subreaper, waiting for each to be gone.
            if self.iso["uid_drop"]:
                kill_uid(child.uid)
            self._sweep()
        self._release(child)
        self._reap()

    def _release(self, child: Child) -> None:
        for fd in (child.out_r, child.st_r, child.cmd_w):
            os.close(fd)
        self._remove_scratch(child.scratch)

    def _reap(self) -> None:
        """Reap orphans reparented here; a session whose holder died is released."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for sid, child in list(self.sessions.items()):
                if child.holder == pid:
                    self._release(self.sessions.pop(sid))

    def _sweep(self) -> None:
        """Kill and reap every child that is not a live session's holder: between requests,
        any other child is a leftover of the execution that just ended."""
        keep = {c.holder for c in self.sessions.values()}
        for _ in range(100):
            kids = _children() - keep
            if not kids:
                return
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass

    # -- requests
    def handle(self, msg: dict) -> dict:
        op = msg["op"]
        if op == "run":
            opts = {k: msg[k] for k in ("display", "stderr_on_success") if k in msg}
            child = self.spawn(msg["code"], math.ceil(msg["timeout"]) + 1, opts)
            try:
                return self.collect(child, msg["timeout"], msg.get("max_output"))
            finally:
                self.finish(child)
        if op == "session_open":
            child = self.spawn(None, self.cfg["session_cpu_s"])
            sid = self.counter
            self.sessions[sid] = child
            return {"sid": sid}
        if op == "session_run":
            child = self.sessions.get(msg["sid"])
            if child is None:
                return {"status": "crashed", "output": "", "truncated": False,
                        "duration": 0.0, "alive": False}
            try:
                send(child.cmd_w, {"code": msg["code"], "display": msg.get("display", True),
                                   "stderr_on_success": msg.get("stderr_on_success", True)})
            except OSError:
                pass  # child already dead: collect reports the crash
            reply = self.collect(child, msg["timeout"], msg.get("max_output"))
            if not reply["alive"]:
                self.finish(self.sessions.pop(msg["sid"]))
            return reply
        if op == "session_close":
            child = self.sessions.pop(msg["sid"], None)
            if child is not None:
                self.finish(child)
            return {"closed": True}
        raise ValueError(f"unknown op {op!r}")

    def serve(self) -> None:
        try:
            while (msg := recv(self.proto_in)) is not None and msg["op"] != "exit":
                try:
                    reply = self.handle(msg)
                except Exception as exc:  # noqa: BLE001 - report, keep serving
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                send(self.proto_out, reply)
        finally:
            for child in list(self.sessions.values()):
                self.finish(child)
            shutil.rmtree(self.base, ignore_errors=True)


def _describe_exit(status: int | None) -> str:
    if status is None:
        return "\n[process crashed]"
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        hint = " (out of memory or CPU time?)" if name in ("SIGKILL", "SIGXCPU") else ""
        return f"\n[process crashed: killed by {name}{hint}]"
    return f"\n[process exited with code {os.WEXITSTATUS(status)} before finishing]"


def _children() -> set[int]:
    """This process's children (Linux /proc); empty where that is not readable."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return {int(p) for p in f.read().split()}
    except OSError:
        return set()


def main() -> None:
    cfg = json.loads(sys.argv[1])
    # Our protocol lives on the original stdin/stdout; fds 0-2 are rebound so stray prints
    # from libraries cannot corrupt it.
    proto_in, proto_out = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (0, 1))
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    server = Server(cfg, proto_in, proto_out)
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001 - tell the parent why, then stop
        send(proto_out, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        raise SystemExit(1) from exc
    server.serve()


if __name__ == "__main__":
    main()
