"""The sandbox: behaviour, and every threat from the threat list, on the real OS mechanisms."""

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from aimo_lib.sandbox import ExecutionResult, Sandbox, SandboxError

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")


def _procs() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, real uid) for every process on the machine."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            out[int(entry)] = (int(fields["PPid"]), int(fields["Uid"].split()[0]))
        except (OSError, KeyError, ValueError):
            pass
    return out


def leftovers(sb: Sandbox) -> list[int]:
    """Processes below any worker, plus any process running under a sandbox uid."""
    procs = _procs()
    roots = {w.proc.pid for w in sb._workers if w is not None}
    lo = sb._cfg["uid_base"]
    hi = lo + sb._cfg["uid_span"] * len(sb._workers)
    found = []
    for pid, (_, uid) in procs.items():
        p, seen = pid, 0
        while p in procs and p not in roots and seen < 64:
            p, seen = procs[p][0], seen + 1
        if (p in roots and pid not in roots) or lo <= uid < hi:
            found.append(pid)
    return found


def settle(sb: Sandbox, timeout: float = 3.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := leftovers(sb)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# ---------------------------------------------------------------- behaviour


def test_preloads_are_globals_and_output_is_captured(sandbox):
    code = "x = sp.Symbol('x')\nprint(sp.factor(x**2 - 1), math.gcd(12, 18), np.arange(3).sum())"
    r = sandbox.run(code)
    assert isinstance(r, ExecutionResult)
    assert (r.status, r.output) == ("ok", "(x - 1)*(x + 1) 6 3\n")
    assert r.duration_s > 0 and not r.truncated


def test_repl_display_of_a_bare_last_expression(sandbox):
    assert sandbox.run("a = 6\na * 7").output == "42\n"
    assert sandbox.run("x = 5").output == ""  # not print(x = 5), the seed notebook's bug
    assert sandbox.run("for i in range(3):\n    i").output == ""  # indented last line
    assert sandbox.run("None").output == ""
    assert sandbox.run("print('a')\n'b'").output == "a\n'b'\n"
    assert sandbox.run("sp.Rational(1, 3) + 1").output == "4/3\n"


def test_stdout_and_stderr_in_order_and_traceback_lines_are_the_models(sandbox):
    code = "import sys\nprint('one')\nprint('two', file=sys.stderr)\nprint('three')\n1/0\n"
    r = sandbox.run(code)
    assert r.status == "error"
    assert r.output.startswith("one\ntwo\nthree\nTraceback (most recent call last):\n")
    assert 'File "<cell>", line 5' in r.output and "ZeroDivisionError" in r.output
    assert "_sandbox_" not in r.output and "exec(" not in r.output


def test_error_inside_a_function_keeps_every_model_frame(sandbox):
    r = sandbox.run("def f(n):\n    return [][n]\n\nf(3)")
    assert 'line 4, in <module>' in r.output and 'line 2, in f' in r.output
    assert "IndexError" in r.output


def test_syntax_error_points_at_the_line(sandbox):
    r = sandbox.run("a = 1\nb = (\n")
    assert r.status == "error" and "SyntaxError" in r.output and "line 2" in r.output


def test_system_exit(sandbox):
    assert sandbox.run("print('bye'); exit()").status == "ok"
    assert sandbox.run("import sys; sys.exit(3)").status == "error"


def test_stdin_is_closed(sandbox):
    r = sandbox.run("input('n? ')")
    assert r.status == "error" and "EOFError" in r.output and r.duration_s < 2


def test_long_output_keeps_head_and_tail_with_a_marker(sandbox):
    r = sandbox.run("for i in range(2000):\n    print(i)")
    assert r.status == "ok" and r.truncated
    assert r.output.startswith("0\n1\n2\n") and r.output.endswith("1998\n1999\n")
    assert "characters truncated" in r.output and len(r.output) < 400 + 60


def test_an_output_flood_never_grows_the_callers_memory(sandbox):
    r = sandbox.run("while True:\n    print('x' * 10000)")
    assert r.status in ("error", "timeout") and r.truncated
    assert len(r.output) < 600


def test_runs_never_see_each_others_state(sandbox):
    sandbox.run("leak = 1\nmath.sqrt = None\nnp.pi = 3\nimport sympy\nsympy.leak = 2")
    r = sandbox.run("print('leak' in globals(), math.sqrt(4), np.pi > 3.14, hasattr(sp, 'leak'))")
    assert r.output == "False 2.0 True False\n"


def test_files_written_by_a_run_are_gone_for_the_next(sandbox):
    assert sandbox.run("open('f.txt', 'w').write('hi')\nimport os\nos.listdir('.')").ok
    assert sandbox.run("import os\n'f.txt' in os.listdir('.')").output == "False\n"


def test_run_many_keeps_order_and_runs_concurrently(sandbox):
    codes = [f"import time\ntime.sleep(1.0)\n{i} ** 2" for i in range(4)]
    start = time.monotonic()
    results = sandbox.run_many(codes)
    assert [r.output for r in results] == [f"{i * i}\n" for i in range(4)]
    # one after another takes 4 s at least; two workers overlap the sleeps (2 s and
    # start-up, with room for a busy machine)
    assert time.monotonic() - start < 3.5


def test_concurrent_callers_from_many_threads(sandbox):
    out: dict[int, str] = {}

    def worker(k: int) -> None:
        s = sandbox.session()
        s.run(f"k = {k}")
        out[k] = sandbox.run(f"{k} * 3").output + s.run("k + 1").output
        s.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == {k: f"{3 * k}\n{k + 1}\n" for k in range(8)}


# ---------------------------------------------------------------- sessions


def test_session_keeps_names(sandbox):
    with sandbox.session() as s:
        assert s.run("import fractions\nx = sp.Symbol('x')\ncount = 1").ok
        assert s.run("count += 1\nsp.expand((x + 1)**2), count").output == "(x**2 + 2*x + 1, 2)\n"
    with sandbox.session() as other:
        assert "NameError" in other.run("count").output


def test_session_is_replayed_after_a_timeout_without_the_cell_that_timed_out(sandbox):
    with sandbox.session() as s:
        s.run("calls = []\ncalls.append('a')")
        s.run("calls.append('b')")
        r = s.run("calls.append('hang')\nwhile True:\n    pass", timeout_s=1)
        assert r.status == "timeout" and "timed out after 1 s" in r.output
        assert s.run("calls").output == "['a', 'b']\n"


def test_session_is_replayed_after_a_crash(sandbox):
    with sandbox.session() as s:
        s.run("v = 41")
        r = s.run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
        assert r.status == "crashed" or r.status == "ok"  # PID 1 may ignore its own signals
        r = s.run("import ctypes\nctypes.string_at(0)")  # a real segfault
        assert r.status == "crashed" and "SIGSEGV" in r.output
        assert s.run("v + 1").output == "42\n"


def test_session_without_replay_says_its_state_is_gone(sandbox):
    with sandbox.session(replay=False) as s:
        s.run("v = 1")
        assert s.run("while True: pass", timeout_s=0.5).status == "timeout"
        r = s.run("'v' in globals()")
        assert r.output.endswith("False\n") and "earlier names are gone" in r.output


def test_session_cells_cannot_leave_processes_or_threads_behind(sandbox):
    with sandbox.session() as s:
        s.run("n = 7")
        code = """
        import os, threading, time
        if os.fork() == 0:
            os.setsid()
            time.sleep(60)
            os._exit(0)
        threading.Thread(target=time.sleep, args=(0.2,)).start()
        m = 6
        """
        assert s.run(textwrap.dedent(code)).ok  # waits for its short thread
        if sandbox.isolation.pid_namespace:
            assert s.run("n * m").output == "42\n"  # the forked sleeper was killed
            assert settle(sandbox, 1.0) != []  # the session's own process is alive
        hang = "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()"
        assert s.run(hang, timeout_s=1).status == "timeout"  # a thread outliving the cell
        assert s.run("n * m").output == "42\n"  # replayed, without the hanging cell
    assert settle(sandbox) == []


# ---------------------------------------------------------------- threats


def test_infinite_loop_is_killed_on_time_even_when_signals_are_ignored(sandbox):
    code = """
    import signal
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    print('spinning', flush=True)
    while True:
        pass
    """
    start = time.monotonic()
    r = sandbox.run(textwrap.dedent(code), timeout_s=1.0)
    assert r.status == "timeout" and r.output.startswith("spinning\n")
    assert time.monotonic() - start < 2.5
    assert sandbox.run("1 + 1").output == "2\n"


def test_memory_bomb_fails_inside_the_sandbox(sandbox):
    r = sandbox.run("x = bytearray(4 * 2**30)")
    assert r.status in ("error", "crashed") and "Memory" in r.output + "SIGKILL"
    r = sandbox.run("np.ones((2**16, 2**16))")
    assert r.status in ("error", "crashed")
    assert sandbox.run("1").output == "1\n"


def test_large_files_are_capped(sandbox):
    code = "with open('big', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * 2**20)"
    r = sandbox.run(code)
    assert r.status in ("error", "crashed")  # RLIMIT_FSIZE (SIGXFSZ) or a full scratch


@linux_only
def test_fork_bomb_is_contained_and_leaves_nothing(sandbox):
    if sandbox.isolation.level == "process":
        pytest.skip("no per-execution process cap at the process level")
    code = """
    import os
    while True:
        try:
            os.fork()
        except OSError:
            pass
    """
    r = sandbox.run(textwrap.dedent(code), timeout_s=1.5)
    assert r.status in ("timeout", "crashed")
    assert settle(sandbox) == []
    assert sandbox.run("2 + 2").output == "4\n"


@linux_only
def test_forks_threads_and_setsid_escapees_do_not_outlive_the_run(sandbox):
    code = """
    import os, subprocess, threading, time
    if os.fork() == 0:               # a daemon: double fork + setsid escapes the group
        os.setsid()
        if os.fork() == 0:
            time.sleep(120)
        os._exit(0)
    if os.fork() == 0:
        time.sleep(120)
    threading.Thread(target=time.sleep, args=(120,)).start()
    print('started')
    """
    r = sandbox.run(textwrap.dedent(code))
    assert r.output.startswith("started")
    assert settle(sandbox) == []


def test_cannot_signal_or_see_the_caller(sandbox):
    me = os.getpid()
    code = f"""
    import os, signal
    for target in ({me}, {os.getppid()}, -1, 0):
        try:
            os.kill(target, signal.SIGKILL)
        except OSError as e:
            print(type(e).__name__)
    """
    sandbox.run(textwrap.dedent(code))
    assert sandbox.run("1").output == "1\n"  # we are alive, and so is the sandbox
    if sandbox.isolation.pid_namespace:
        assert sandbox.run("import os\nos.getpid()").output == "1\n"


def test_environment_is_scrubbed(sandbox):
    r = sandbox.run("import os\nprint(sorted(os.environ))\nprint(dict(os.environ))")
    assert "hunter2" not in r.output and "SANDBOX_TEST_SECRET_TOKEN" not in r.output
    assert "TOKEN" not in r.output and "KEY" not in r.output


def test_no_files_outside_the_scratch_directory(sandbox):
    if not sandbox.isolation.chroot:
        pytest.skip("no chroot at this isolation level")
    here = os.path.abspath(__file__)
    pwned = os.path.join(os.path.dirname(here), "pwned")
    for code in (f"open({here!r}).read()", "open('/etc/passwd').read()",
                 f"open({pwned!r}, 'w')", "import os\nos.listdir('/proc')"):
        r = sandbox.run(code)
        assert r.status == "error" and ("FileNotFoundError" in r.output or "Permission" in r.output)
    assert not os.path.exists(pwned)
    assert sandbox.run("import os\nsorted(os.listdir('/'))").output == "['tmp']\n"


def test_runs_as_an_unprivileged_user(sandbox):
    r = sandbox.run("import os\nos.getuid(), os.geteuid()")
    if os.geteuid() == 0 and sandbox.isolation.uid_drop:
        assert "0" not in r.output.strip("()\n").split(", ")


def test_no_network_even_with_socket_loaded():
    from aimo_lib.sandbox import DEFAULT_MODULES

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = f"import socket\nsocket.socket().connect(('127.0.0.1', {port}))"
    try:
        with Sandbox(workers=1, modules=(*DEFAULT_MODULES, "socket", "encodings.idna")) as sb:
            if not sb.isolation.net_namespace:
                pytest.skip("no network namespace here")
            r = sb.run(code)
            assert r.status == "error" and "Network is unreachable" in r.output
            server.settimeout(0.1)
            with pytest.raises(TimeoutError):
                server.accept()  # nothing ever reached the host's loopback
            r = sb.run("import socket\nsocket.getaddrinfo('pypi.org', 443)")
            assert r.status == "error" and "gaierror" in r.output
    finally:
        server.close()


def test_a_worker_that_dies_is_replaced(sandbox):
    victim = sandbox._workers[0].proc
    victim.kill()
    victim.wait()
    results = sandbox.run_many(["7 * 6"] * 6)
    assert [r.output for r in results if r.ok] and all(
        r.output == "42\n" or r.status == "crashed" for r in results)
    assert all(r.output == "42\n" for r in sandbox.run_many(["7 * 6"] * 4))


# ---------------------------------------------------------------- lifecycle and platforms


@linux_only
def test_close_leaves_no_process_and_no_scratch_behind():
    sb = Sandbox(workers=2, timeout_s=2)
    pids = [w.proc.pid for w in sb._workers]
    scratch = [w.ready["scratch"] for w in sb._workers]
    s = sb.session()
    s.run("x = 1")
    sb.run("import os, time\nif os.fork() == 0:\n    time.sleep(60)")
    sb.close()
    procs = _procs()
    assert not any(p in procs for p in pids)
    assert not any(ppid in pids for ppid, _ in procs.values())
    assert not any(os.path.exists(p) for p in scratch)
    with pytest.raises(SandboxError):
        sb.run("1")


def test_bad_arguments_raise_clear_errors(sandbox):
    with pytest.raises(ValueError):
        Sandbox(timeout_s=0)
    with pytest.raises(ValueError, match="isolation"):
        Sandbox(isolation="docker")
    with pytest.raises(TypeError):
        sandbox.run(b"print(1)")
    with pytest.raises(ValueError):
        sandbox.run("1", timeout_s=-1)


def test_process_level_fallback_still_times_out_and_cleans_up():
    with Sandbox(workers=1, timeout_s=1, isolation="process") as sb:
        assert sb.isolation.level == "process" and sb.isolation.warnings
        assert sb.run("sp.factor(sp.Symbol('x')**2 - 4)").output == "(x - 2)*(x + 2)\n"
        code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                "        time.sleep(60)\n    os._exit(0)\nwhile True: pass")
        assert sb.run(code).status == "timeout"
        if sys.platform.startswith("linux"):
            assert settle(sb) == []


@linux_only
def test_chroot_uid_level_as_in_a_container_without_cap_sys_admin():
    """What Docker's default (and Kaggle) allow a root process: chroot and setuid, no
    namespaces. Leftover processes are then killed by uid."""
    if os.geteuid() != 0:
        pytest.skip("the chroot-uid level needs root")
    with Sandbox(workers=1, timeout_s=1.5, isolation="chroot-uid") as sb:
        iso = sb.isolation
        assert (iso.level, iso.pid_namespace, iso.net_namespace, iso.chroot, iso.uid_drop) == (
            "chroot-uid", False, False, True, True)
        assert any("network" in w for w in iso.warnings)
        assert sb.run("sp.factor(sp.Symbol('x')**2 - 1)").output == "(x - 1)*(x + 1)\n"
        r = sb.run("open('/etc/passwd').read()")
        assert r.status == "error" and "FileNotFoundError" in r.output
        assert sb.run("import os\nos.getuid() != 0").output == "True\n"
        daemon = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:"
                  "\n        time.sleep(60)\n    os._exit(0)\nwhile True: pass")
        assert sb.run(daemon).status == "timeout"
        assert settle(sb) == []  # the setsid escapee was killed by uid
        bomb = "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass"
        assert sb.run(bomb).status in ("timeout", "crashed")
        assert settle(sb) == [] and sb.run("1").output == "1\n"
        with sb.session() as s:
            s.run("a = 20")
            assert s.run("while True: pass").status == "timeout"
            assert s.run("a + 1").output == "21\n"


@linux_only
def test_strong_isolation_for_an_ordinary_user(tmp_path):
    """The host not running as root: the worker owns a user namespace instead."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root to switch to an ordinary user")
    python = "/usr/bin/python3"
    site = [p for p in sys.path if p.endswith("site-packages")]
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            python, "-c", "import numpy, sympy, aimo_lib"],
                           env={"PYTHONPATH": os.pathsep.join(sys.path[1:])}, capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no interpreter with numpy/sympy readable by an ordinary user")
    script = textwrap.dedent(f"""
        import os, json
        from aimo_lib.sandbox import Sandbox
        with Sandbox(workers=1, timeout_s=1.5, isolation="namespaces", python={python!r},
                     pythonpath={tuple(site)!r}) as sb:
            iso = sb.isolation
            bomb = sb.run("import os\\nwhile True:\\n    try: os.fork()\\n    except OSError: pass")
            sb.run("import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    time.sleep(60)")
            s = sb.session(); s.run("a = 20"); s.run("while True: pass")
            print(json.dumps(dict(level=iso.level, userns=iso.user_namespace,
                  read=sb.run("open('/etc/passwd').read()").status, bomb=bomb.status,
                  after=sb.run("6 * 7").output, replay=s.run("a + 1").output,
                  esc=sb.run("import os\\nos.chroot('/tmp')").status)))
    """)
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          python, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": os.pathsep.join(sys.path[1:])}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == dict(level="namespaces", userns=True, read="error", bomb=got["bomb"],
                       after="42\n", replay="21\n", esc="error")
    assert got["bomb"] in ("timeout", "crashed")
    stray = [pid for pid, (_, uid) in _procs().items() if uid == 65534]
    assert stray == []


def test_two_sandboxes_never_share_a_uid(sandbox):
    # Leftovers are killed by uid: a shared range would let one sandbox kill the other's code.
    from aimo_lib.sandbox import UID_SPAN, _uid_block

    size = 4 * UID_SPAN
    blocks = [_uid_block(4, UID_SPAN) for _ in range(200)]
    # Blocks are aligned, so two either coincide or are disjoint; all are real, unused uids.
    assert all(b % size == 1_000_000 % size and 1_000_000 <= b < b + size < 2**31 for b in blocks)
    assert len(set(blocks)) >= 195
    assert sandbox._cfg["uid_span"] == UID_SPAN and sandbox._cfg["uid_base"] >= 1_000_000
