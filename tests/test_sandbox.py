"""The sandbox: whatever the code does, the caller gets a result with a reason and goes on."""

import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from t2s import sandbox
from t2s.sandbox import SandboxLimits, run_python

FAST = SandboxLimits(seconds=3, memory_mb=512, file_mb=5, processes=16)


def _landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return max(0, libc.syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), ctypes.c_uint32(1)))


LANDLOCK = _landlock_abi()
needs_landlock = pytest.mark.skipif(
    LANDLOCK < 1, reason="the kernel has no Landlock (Linux >= 5.13, enabled in the LSM list)"
)
needs_landlock_tcp = pytest.mark.skipif(
    LANDLOCK < 4, reason="Landlock TCP rules need Landlock ABI 4 (Linux >= 6.7)"
)
needs_landlock_scopes = pytest.mark.skipif(
    LANDLOCK < 6, reason="Landlock signal scoping needs Landlock ABI 6 (Linux >= 6.12)"
)


@pytest.fixture
def workdir(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "input.txt").write_text("data\n")
    return folder


@pytest.fixture
def as_user(monkeypatch):
    """The path taken without root (CI runs as root): no throw-away uid."""
    monkeypatch.setattr(sandbox, "_sandbox_uid", lambda: None)


def test_normal_code_runs_in_the_workdir_and_its_output_is_captured(workdir):
    code = (
        "import os, sys\n"
        "print(open('input.txt').read().strip(), os.getcwd(), os.listdir('.'))\n"
        "print('e', file=sys.stderr)"
    )
    result = run_python(code, workdir, FAST)
    assert result.ok and result.returncode == 0 and result.reason == ""
    assert result.stdout.split() == ["data", str(workdir.resolve()), "['input.txt']"]
    assert result.stderr.strip() == "e"
    assert sorted(os.listdir(workdir)) == ["input.txt"]


def test_files_written_by_the_code_stay_and_files_in_are_copied(workdir, tmp_path):
    source = tmp_path / "book.bin"
    source.write_bytes(b"xyz")
    code = "open('out.txt', 'w').write(open('book.bin', 'rb').read().decode() * 2)"
    result = run_python(code, workdir, FAST, files_in={"book.bin": source})
    assert result.ok, result.reason
    assert (workdir / "out.txt").read_text() == "xyzxyz"


def test_environment_is_minimal(workdir, monkeypatch):
    monkeypatch.setenv("T2S_SECRET_TOKEN", "hunter2")
    code = "import os, json\nprint(json.dumps(dict(os.environ)))"
    result = run_python(code, workdir, FAST)
    assert result.ok
    assert "hunter2" not in result.stdout
    assert f'"HOME": "{workdir.resolve()}"' in result.stdout


def test_infinite_loop_times_out(workdir):
    started = time.monotonic()
    result = run_python("while True:\n    pass\n", workdir, SandboxLimits(seconds=1.5))
    assert not result.ok
    assert result.reason.startswith("timed out after")
    assert time.monotonic() - started < 10


def test_sleeping_code_is_killed_at_the_wall_clock_limit(workdir):
    result = run_python("import time\ntime.sleep(60)", workdir, SandboxLimits(seconds=1))
    assert not result.ok and result.reason == "timed out after 1s"


def test_huge_allocation_hits_the_memory_limit(workdir):
    result = run_python("x = bytearray(4 * 1024 ** 3)", workdir, FAST)
    assert not result.ok
    assert result.reason == "memory limit exceeded (512 MB)"


def test_huge_file_hits_the_file_size_limit(workdir):
    code = "with open('big.bin', 'wb') as f:\n    f.write(b'x' * 20 * 1024 * 1024)"
    result = run_python(code, workdir, FAST)
    assert not result.ok
    assert result.reason == "output file too large (limit 5 MB)"
    assert (workdir / "big.bin").stat().st_size <= 5 * 1024 * 1024


def test_flood_of_output_is_truncated(workdir):
    result = run_python("for i in range(200000):\n    print(i)", workdir, FAST)
    assert result.ok
    assert len(result.stdout) < sandbox.OUTPUT_CHARS + 200
    assert "bytes cut" in result.stdout
    assert result.stdout.rstrip().endswith("199999")  # the end is kept too


def test_fork_bomb_is_contained(workdir):
    code = "import os\nwhile True:\n    os.fork()\n"
    started = time.monotonic()
    result = run_python(code, workdir, SandboxLimits(seconds=3, processes=16))
    assert not result.ok
    assert result.reason.startswith(("process limit reached", "timed out"))
    assert time.monotonic() - started < 15
    # The caller can still start processes, and the sandbox left none behind.
    after = run_python("print('alive')", workdir, FAST)
    assert after.ok and after.stdout.strip() == "alive"


def test_processes_that_escape_the_session_are_killed(workdir, tmp_path):
    marker = workdir / "still-running"
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(2)\n"
        "    open('still-running', 'w').write('yes')\n"
        "    os._exit(0)\n"
        "print('parent exits')\n"
    )
    result = run_python(code, workdir, FAST)
    assert result.ok
    time.sleep(3)
    if sandbox._sandbox_uid() is None:
        pytest.skip("not root: escaped sessions are only cleaned up under a sandbox uid")
    assert not marker.exists()


def test_syntax_error_and_exceptions_give_the_last_line(workdir):
    result = run_python("def broken(:\n    pass", workdir, FAST)
    assert not result.ok and result.reason.startswith("SyntaxError")
    result = run_python("x = 1\ny = x / 0", workdir, FAST)
    assert result.reason == "ZeroDivisionError: division by zero"
    # The traceback points into the model's code, with its source line, and nowhere else.
    assert 'File "step.py", line 2' in result.stderr and "y = x / 0" in result.stderr
    assert result.stderr.count("File ") == 1
    result = run_python("import sys\nsys.exit(3)", workdir, FAST)
    assert result.reason == "exit code 3" and result.returncode == 3


def test_killed_by_a_signal(workdir):
    result = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)", workdir, FAST)
    assert not result.ok and result.reason == "killed by signal 15 (SIGTERM)"


@pytest.mark.skipif(
    os.geteuid() != 0 and LANDLOCK < 1,
    reason="write protection outside the workdir needs root or Landlock",
)
def test_files_of_the_caller_cannot_be_changed_or_deleted(workdir, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    gold = tmp_path / "gold.xlsx"
    gold.write_bytes(b"gold")
    code = (
        each_refused_or_done(
            f"open({str(precious)!r}, 'w').write('gone')",
            f"os.remove({str(precious)!r})",
            f"os.remove({str(gold)!r})",
            f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')",
            "os.rmdir('..')",
        )
        + "os.remove('input.txt')\n"
    )
    result = run_python(code, workdir, FAST)
    assert result.ok, result.reason
    assert "done" not in result.stdout
    assert precious.read_text() == "keep me" and gold.read_bytes() == b"gold"
    assert not (tmp_path / "new.txt").exists()
    assert not (workdir / "input.txt").exists()  # its own folder is its to change


def test_a_missing_workdir_is_created(tmp_path):
    result = run_python("print(1)", tmp_path / "new" / "dir", FAST)
    assert result.ok and result.stdout.strip() == "1"


def test_limits_round_trip():
    limits = SandboxLimits(seconds=5, memory_mb=256, cpu_seconds=3, file_mb=1, processes=8)
    assert SandboxLimits.from_dict(limits.to_dict()) == limits


@pytest.mark.parametrize("own_uid", [True, False], ids=["own-uid", "user-uid"])
def test_the_code_dies_with_the_process_that_ran_it(workdir, own_uid):
    """A pool worker killed on its timeout must not leave the model's code running."""
    import signal

    if own_uid and sandbox._sandbox_uid() is None:
        pytest.skip("not root: there is no throw-away uid to run the code as")
    environment = dict(os.environ)
    if not own_uid:
        environment["T2S_SANDBOX_NO_UID"] = "1"
    code = "import time\ntime.sleep(3)\nopen('alive', 'w').write('yes')"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys\nfrom t2s.sandbox import run_python, SandboxLimits\n"
                f"run_python({code!r}, {str(workdir)!r}, SandboxLimits(seconds=60))"
            ),
        ],
        env=environment,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and worker.poll() is None:
        # Wait until the sandboxed child exists, then kill its parent outright.
        children = subprocess.run(
            ["pgrep", "-P", str(worker.pid)], check=False, capture_output=True, text=True
        ).stdout.split()
        if children:
            break
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    time.sleep(4)
    assert not (workdir / "alive").exists()


def test_without_uid_isolation_the_limits_still_hold(workdir, monkeypatch):
    """The path taken without root (or with T2S_SANDBOX_NO_UID): limits and group kill only."""
    monkeypatch.setenv("T2S_SANDBOX_NO_UID", "1")
    assert sandbox._sandbox_uid() is None
    result = run_python("import os\nprint(os.getuid() == os.geteuid())", workdir, FAST)
    assert result.ok and result.stdout.strip() == "True"
    assert run_python("x = bytearray(4 * 1024 ** 3)", workdir, FAST).reason.startswith("memory")
    slow = run_python("import time\ntime.sleep(30)", workdir, SandboxLimits(seconds=1))
    assert slow.reason == "timed out after 1s"


def each_refused_or_done(*actions: str) -> str:
    """Code that tries each expression in turn and prints 'done' or 'refused <error>' for it."""
    tries = "".join(f"    lambda: {action},\n" for action in actions)
    return (
        f"import os\nfor action in (\n{tries}):\n"
        "    try:\n        action()\n        print('done')\n"
        "    except OSError as e:\n        print('refused', type(e).__name__)\n"
    )


def connect_from_the_sandbox(workdir):
    """The sandboxed code tries a TCP connection to a server of ours: (its result, whether
    our server accepted a connection)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    print('connected')\n"
            "except OSError as error:\n"
            "    print('refused', type(error).__name__)\n"
        )
        result = run_python(code, workdir, FAST)
        server.setblocking(False)
        try:
            server.accept()
        except BlockingIOError:
            return result, False
        return result, True


def test_the_network_is_out_of_reach(workdir):
    if sandbox._sandbox_uid() is None and LANDLOCK < 4:
        pytest.skip("neither root nor Landlock TCP rules: the namespace alone may be refused")
    result, accepted = connect_from_the_sandbox(workdir)
    assert result.ok and result.stdout.startswith("refused") and not accepted


@needs_landlock
def test_without_root_files_outside_the_workdir_cannot_be_written_or_removed(
    workdir, tmp_path, as_user
):
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o777)  # so that only the sandbox, not file permissions, stands in the way
    victim = outside / "victim.txt"
    victim.write_text("keep me")
    victim.chmod(0o666)
    code = each_refused_or_done(
        f"open({str(outside / 'new.txt')!r}, 'w').write('x')",
        f"open({str(victim)!r}, 'a').write('x')",
        f"os.remove({str(victim)!r})",
        f"os.rename({str(victim)!r}, {str(outside / 'moved.txt')!r})",
        f"os.rename({str(victim)!r}, 'stolen.txt')",
        f"os.mkdir({str(outside / 'dir')!r})",
        f"os.symlink('/etc/passwd', {str(outside / 'link')!r})",
    ) + (
        "os.mkdir('sub')\n"
        "open('sub/mine.txt', 'w').write('mine')\n"
        "os.rename('sub/mine.txt', 'mine.txt')\n"
        "os.remove('input.txt')\n"
        "open(os.devnull, 'w').write('into the void')\n"
    )
    result = run_python(code, workdir, FAST)
    assert result.ok, result.stderr
    assert result.stdout.splitlines() == ["refused PermissionError"] * 7
    assert sorted(path.name for path in outside.iterdir()) == ["victim.txt"]
    assert victim.read_text() == "keep me"
    assert (workdir / "mine.txt").read_text() == "mine" and not (workdir / "input.txt").exists()


@needs_landlock_tcp
def test_without_root_no_tcp_connection_gets_out(workdir, as_user):
    result, accepted = connect_from_the_sandbox(workdir)
    assert not accepted
    # Landlock checks before routing: it answers even inside an empty network namespace.
    assert result.ok and result.stdout.strip() == "refused PermissionError"


@needs_landlock_scopes
def test_without_root_the_code_cannot_signal_processes_outside_the_sandbox(workdir, as_user):
    code = (
        "import os\n"
        "os.kill(os.getpid(), 0)  # its own processes are fine\n"
        "try:\n"
        f"    os.kill({os.getpid()}, 0)\n"
        "    print('reached')\n"
        "except PermissionError:\n"
        "    print('refused')\n"
    )
    result = run_python(code, workdir, FAST)
    assert result.ok and result.stdout.strip() == "refused", result.stderr


@needs_landlock
def test_without_root_multiprocessing_still_works(workdir, as_user):
    """Its semaphores live in /dev/shm, which stays writable."""
    code = (
        "import multiprocessing\n"
        "with multiprocessing.Pool(2) as pool:\n"
        "    print(sum(pool.map(abs, [-1, -2, 3])))\n"
    )
    result = run_python(code, workdir, SandboxLimits(seconds=20, processes=16))
    assert result.ok and result.stdout.strip() == "6", result.stderr


@needs_landlock
def test_the_protections_in_effect_are_reported(workdir, as_user):
    result = run_python("print(1)", workdir, FAST)
    assert result.protections["landlock"] == LANDLOCK and result.protections["uid"] == "user"
    assert result.protections["network"] in ("namespace", "landlock-tcp")
    assert result.to_dict()["protections"] == result.protections


def test_with_root_the_throw_away_uid_is_reported(workdir):
    if sandbox._sandbox_uid() is None:
        pytest.skip("not root: no throw-away uid")
    result = run_python("print(1)", workdir, FAST)
    assert result.protections == {"landlock": LANDLOCK, "network": "namespace", "uid": "own"}


@needs_landlock_tcp
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) from util-linux")
def test_when_namespaces_are_refused_landlock_still_holds(tmp_path):
    """Containers often refuse unshare; the code then runs without a network namespace."""
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o777)
    code = (
        "import socket\n"
        "open('mine.txt', 'w').write('mine')\n"
        "for action in (\n"
        f"    lambda: open({str(outside / 'new.txt')!r}, 'w'),\n"
        "    lambda: socket.create_connection(('127.0.0.1', 9), timeout=2),\n"
        "):\n"
        "    try:\n"
        "        action()\n"
        "    except PermissionError:\n"
        "        print('refused')\n"
    )
    runner = (
        "import json\n"
        "from t2s import sandbox\n"
        "sandbox._sandbox_uid = lambda: None\n"
        f"result = sandbox.run_python({code!r}, {str(tmp_path / 'work')!r})\n"
        "print(json.dumps(result.to_dict()))\n"
    )
    # A user namespace of our own in which no further namespace may be created.
    shell = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" -c "$1"'
    ran = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", shell, sys.executable, runner],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if ran.returncode != 0 and not ran.stdout:
        pytest.skip(f"cannot set up a user namespace here: {ran.stderr.strip()[-200:]}")
    result = json.loads(ran.stdout)
    assert result["ok"], result["stderr"]
    assert result["protections"]["network"] == "landlock-tcp"
    assert result["stdout"].split() == ["refused", "refused"]
    assert (tmp_path / "work" / "mine.txt").read_text() == "mine"
    assert not (outside / "new.txt").exists()
