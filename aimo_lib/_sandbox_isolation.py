"""The sandbox worker's OS isolation (internal; Linux): namespaces, chroot, dropped uids and
capabilities, and killing what a uid left behind. See aimo_lib._sandbox_worker for the process
tree these build and docs/sandbox.md for what each level guarantees."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

# Linux constants (linux/sched.h, linux/mount.h, linux/prctl.h).
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE, MNT_DETACH = 2, 4, 0x4000, 1 << 18, 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38

LIBC = ctypes.CDLL(None, use_errno=True)


def libc_call(name: str, *args) -> None:
    """Call a libc function, raising OSError on failure (or if this libc lacks it)."""
    fn = getattr(LIBC, name, None)
    if fn is None:
        raise OSError(0, f"{name} is not available on this platform")
    if fn(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _probe(fn) -> bool:
    """Run fn in a forked child; True if it returned without raising."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def setup_isolation(cfg: dict) -> dict:
    """Enter the strongest isolation this platform permits; describe what is in force."""
    iso = dict(level="process", pid_namespace=False, net_namespace=False, private_mounts=False,
               chroot=False, uid_drop=False, user_namespace=False, warnings=[])
    want = cfg["isolation"]
    if want == "process" or not sys.platform.startswith("linux"):
        why = "requested" if want == "process" else f"{sys.platform} has no namespaces"
        iso["warnings"].append(f"process-level isolation only ({why}): model code runs as this "
                               "user, can read its files and reach the network")
        return iso
    root = os.geteuid() == 0
    uid, gid = os.geteuid(), os.getegid()
    try:
        if want == "chroot-uid":  # as in a container without CAP_SYS_ADMIN (Docker, Kaggle)
            raise OSError(0, "not requested")
        if root:
            libc_call("unshare", CLONE_NEWNS | CLONE_NEWNET)
        else:  # an unprivileged user may still own a user namespace, where it has capabilities
            libc_call("unshare", CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET)
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"0 {uid} 1")
            _write("/proc/self/gid_map", f"0 {gid} 1")
            iso["user_namespace"] = True
        iso["net_namespace"] = True
        libc_call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
        iso["private_mounts"] = True
    except OSError as exc:
        iso["warnings"].append(f"namespaces unavailable ({exc.strerror}): no network isolation")
    iso["pid_namespace"] = want != "chroot-uid" and _probe(lambda: libc_call("unshare",
                                                                       CLONE_NEWPID))
    if not iso["pid_namespace"]:
        iso["warnings"].append("no PID namespace: leftover processes are killed by uid or group")
    can_chroot = root or iso["user_namespace"]
    iso["chroot"] = can_chroot and _probe(lambda: os.chroot("/"))
    if root:
        iso["uid_drop"] = _probe(lambda: os.setresuid(cfg["uid_base"], cfg["uid_base"], 0))
    if not iso["chroot"]:
        iso["warnings"].append("no chroot: code can read files the worker's user can read")
    if not (iso["uid_drop"] or iso["user_namespace"]):
        iso["warnings"].append("code runs as the host user: it can signal that user's processes")
    strong = iso["pid_namespace"] and iso["net_namespace"] and iso["chroot"]
    iso["level"] = "namespaces" if strong else ("chroot-uid" if iso["chroot"] else "process")
    return iso


def drop_capabilities() -> None:
    """Leave a user namespace's root with no capabilities (so no chroot escape)."""
    for cap in range(64):
        if LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    data = (ctypes.c_uint32 * 6)()  # two zeroed {effective, permitted, inheritable} sets
    libc_call("capset", ctypes.byref(Header(0x20080522, 0)), data)


def kill_uid(uid: int) -> None:
    """Kill every process of `uid`: a killer with that uid sends kill(-1) until none is left."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresuid(uid, uid, uid)
            for _ in range(1000):
                os.kill(-1, signal.SIGKILL)  # never signals the caller itself
        except BaseException:  # noqa: BLE001 - ProcessLookupError: none left
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def count_processes(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        try:
            count += entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid
        except OSError:
            pass
    return count
