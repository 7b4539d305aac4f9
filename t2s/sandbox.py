"""Run code a model wrote in a separate, limited process, and always come back with a reason.

Every run is a fresh interpreter (`sys.executable -I -B`) in its own session, started in the
given working directory with a minimal environment and resource limits (address space, CPU
time, size of any file written, number of processes). A wall-clock timeout kills the whole
process group. Whatever the code does, the caller gets a `SandboxResult` and goes on.

With root (containers, CI), root ignores RLIMIT_NPROC and can write anywhere, so the code runs
as a throw-away user id of its own: the process limit then holds, files of others are not
writable, the network is out of reach (an empty network namespace), and at the end every
process of that uid is killed, including ones that escaped the process group with `setsid`.
The child keeps one capability, CAP_DAC_READ_SEARCH, so that it can still read the interpreter
and its libraries wherever they are installed (often under a private /root).

Without root (a user's workstation) the code runs as the user: the limits apply to the user's
own uid and cleanup is by process group. It first tries an unprivileged user plus network
namespace (no network at all, UDP included); containers often refuse that, and then nothing
but Landlock keeps it off the network.

In both modes, Landlock (Linux >= 5.13, no privileges needed) then fences the code in: it may
read anything the uid may, but write only in its working directory, /dev/null and /dev/shm
(multiprocessing's semaphores); from ABI 4 (Linux 6.7) it can neither connect nor bind any TCP
port; from ABI 6 (Linux 6.12) it cannot signal or reach through abstract unix sockets any
process outside the sandbox, such as the pool worker that started it or the user's programs.
On a kernel without Landlock and without root, the code can write wherever the user can, and
reach the network unless it got the namespace. `SandboxResult.protections` says what held.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CODE_NAME = "step.py"  # what tracebacks call the code
OUTPUT_CHARS = 20_000  # of stdout and of stderr kept for the caller
_SANDBOX_UID_BASE = 1_900_000_000  # far above any uid a system hands out to people

# Runs first in the child: set the limits, drop privileges when asked, fence the code in with
# Landlock, report what holds, then run the code as __main__. It is passed with -c so nothing of
# it lands in the working directory.
_BOOTSTRAP = r"""
import ctypes, json, linecache, os, resource, sys, traceback
_p = json.loads(sys.argv[1])
with open(_p["script"], encoding="utf-8") as _f:
    _source = _f.read()
_report = open(_p["report"], "w", encoding="utf-8")  # now: the io dir is closed to a dropped uid
linecache.cache[_p["name"]] = (len(_source), None, _source.splitlines(True), _p["name"])
def _hook(kind, value, tb):
    while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
        tb = tb.tb_next  # this bootstrap is not the model's concern
    traceback.print_exception(kind, value, tb)
sys.excepthook = _hook
for _name, _value in _p["rlimits"].items():
    resource.setrlimit(getattr(resource, _name), (_value, _value if _name != "RLIMIT_CPU" else _value + 1))
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# PR_SET_NO_NEW_PRIVS: no setuid binary can regain privileges, and Landlock requires it.
_libc.prctl(38, 1, 0, 0, 0)
if _p["uid"] is not None:
    _libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS: keep permitted capabilities across setuid
    _netns = _libc.unshare(0x40000000) == 0  # CLONE_NEWNET: no network at all (best effort)
    os.setgroups([])
    os.setresgid(_p["uid"], _p["uid"], _p["uid"])
    os.setresuid(_p["uid"], _p["uid"], _p["uid"])
    class _Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class _Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    _keep = 1 << 2  # CAP_DAC_READ_SEARCH only: read the interpreter, write nothing of others
    _data = (_Data * 2)(_Data(_keep, _keep, 0), _Data(0, 0, 0))
    if _libc.capset(ctypes.byref(_Header(0x20080522, 0)), _data) != 0:
        raise SystemExit("sandbox: capset failed")
    resource.setrlimit(resource.RLIMIT_NPROC, (_p["processes"], _p["processes"]))
else:
    # CLONE_NEWUSER | CLONE_NEWNET: an empty network namespace (UDP too) without root. The user
    # namespace stays unmapped: files are still accessed as the user. Containers often refuse it.
    _netns = _libc.unshare(0x50000000) == 0
# Die with the process that started us (a pool worker killed on a timeout cannot clean up).
# Set after setuid, which clears it.
_libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
if os.getppid() != _p["parent"]:
    os._exit(1)
def _syscall(number, *args):
    return _libc.syscall(ctypes.c_long(number), *args)
def _landlock(workdir):
    # Writes only in the workdir, no TCP, no signals out of the sandbox. The ABI, or 0 if none.
    abi = _syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # ..._CREATE_RULESET_VERSION
    if abi < 1:
        return 0
    # Write-type rights only (WRITE_FILE, REMOVE_DIR .. MAKE_SYM, then REFER, TRUNCATE,
    # IOCTL_DEV as the ABI grows): reading and executing stay open for the interpreter.
    fs = 0x1FF2 | (0x2000 if abi >= 2 else 0) | (0x4000 if abi >= 3 else 0)
    fs |= 0x8000 if abi >= 5 else 0
    net = 0b11 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP, and no rule allows any port
    scoped = 0b11 if abi >= 6 else 0  # abstract unix sockets and signals stay inside
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _syscall(444, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return 0
    class _Beneath(ctypes.Structure):  # struct landlock_path_beneath_attr, packed
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]
    truncate = fs & 0x4000
    rules = [
        (workdir, fs, True),
        ("/dev/null", 0x2 | truncate, False),  # WRITE_FILE: code often writes there
        # multiprocessing's locks and queues are POSIX semaphores, created (MAKE_REG, WRITE_FILE)
        # and unlinked (REMOVE_FILE) in /dev/shm. That tmpfs holds shared memory of running
        # programs, not the user's files, so working multiprocessing is worth the little risk.
        ("/dev/shm", 0x2 | 0x20 | 0x100 | truncate, False),
    ]
    try:
        for path, allowed, needed in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                if needed:
                    return 0
                continue
            try:
                rule = ctypes.byref(_Beneath(allowed, fd))
                beneath = ctypes.c_int(1)  # LANDLOCK_RULE_PATH_BENEATH
                added = _syscall(445, ctypes.c_int(ruleset), beneath, rule, ctypes.c_uint32(0))
            finally:
                os.close(fd)
            if added != 0 and needed:
                return 0  # a sandbox that cannot write its own folder is no use
        return abi if _syscall(446, ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0 else 0
    finally:
        os.close(ruleset)
_abi = _landlock(_p["workdir"])
_network = "namespace" if _netns else "landlock-tcp" if _abi >= 4 else "none"
_report.write(json.dumps({"landlock": _abi, "network": _network,
                          "uid": "user" if _p["uid"] is None else "own"}))
_report.close()
sys.argv = [_p["name"]]
_code = compile(_source, _p["name"], "exec")
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})  # fresh globals
"""


@dataclass
class SandboxLimits:
    seconds: float = 20  # wall clock
    memory_mb: int = 1024  # address space
    cpu_seconds: float | None = None  # CPU time; defaults to `seconds`
    file_mb: int = 50  # largest file the code may write (stdout and stderr included)
    processes: int = 64

    def to_dict(self) -> dict:
        return {
            "seconds": self.seconds,
            "memory_mb": self.memory_mb,
            "cpu_seconds": self.cpu_seconds,
            "file_mb": self.file_mb,
            "processes": self.processes,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SandboxLimits:
        return cls(**{key: data[key] for key in cls().to_dict() if key in data})


@dataclass
class SandboxResult:
    ok: bool
    returncode: int | None  # None when the run never started
    stdout: str
    stderr: str
    reason: str  # "" when ok, else one line saying why it failed
    seconds: float
    # What held for this run, as the child reported it: {"landlock": ABI or 0, "network":
    # "namespace" | "landlock-tcp" | "none", "uid": "own" | "user"}; empty if it never got there.
    protections: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def run_python(
    code: str,
    workdir: Path | str,
    limits: SandboxLimits | None = None,
    files_in: dict[str, Path | str] | None = None,
) -> SandboxResult:
    """Run `code` with `workdir` as its working directory, HOME and TMPDIR.

    `files_in` maps file names to paths copied into `workdir` first. The code itself is kept
    outside `workdir`, so the directory holds only the files and what the code leaves there.
    """
    limits = limits or SandboxLimits()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for name, source in (files_in or {}).items():
        shutil.copyfile(source, workdir / name)
    uid = _sandbox_uid()
    if uid is not None:
        _give_to(workdir, uid)
    return _run(code, workdir, limits, uid)


def _run(code: str, workdir: Path, limits: SandboxLimits, uid: int | None) -> SandboxResult:
    cpu = limits.cpu_seconds if limits.cpu_seconds is not None else limits.seconds
    rlimits = {
        "RLIMIT_AS": limits.memory_mb * 1024 * 1024,
        "RLIMIT_CPU": max(1, int(cpu + 0.999)),
        "RLIMIT_FSIZE": limits.file_mb * 1024 * 1024,
        "RLIMIT_CORE": 0,
    }
    processes = limits.processes
    if uid is None and os.geteuid() != 0:
        # RLIMIT_NPROC counts every process of the user, not just ours.
        processes += _processes_of(os.getuid())
        rlimits["RLIMIT_NPROC"] = processes
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="t2s-sandbox-io-") as io_dir:
        out_path, err_path = Path(io_dir) / "stdout", Path(io_dir) / "stderr"
        report_path = Path(io_dir) / "protections.json"
        script = Path(io_dir) / CODE_NAME
        script.write_text(code, encoding="utf-8")
        params = {
            "rlimits": rlimits,
            "uid": uid,
            "processes": processes,
            "script": str(script),
            "report": str(report_path),
            "workdir": str(workdir),
            "parent": os.getpid(),
            "name": CODE_NAME,
        }
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                process = subprocess.Popen(
                    [sys.executable, "-I", "-B", "-c", _BOOTSTRAP, json.dumps(params)],
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as error:
                return SandboxResult(False, None, "", "", f"could not start: {error}", 0.0)
            timed_out = False
            try:
                process.wait(timeout=limits.seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process.pid)
                if uid is not None:
                    _kill_uid(uid)
                process.wait()
        seconds = time.monotonic() - started
        stdout = _read_capped(out_path)
        stderr = _read_capped(err_path)
        protections = _read_protections(report_path)
    reason = _reason(process.returncode, stderr, timed_out, limits, cpu)
    return SandboxResult(
        not reason, process.returncode, stdout, stderr, reason, seconds, protections
    )


def _reason(returncode: int, stderr: str, timed_out: bool, limits: SandboxLimits, cpu) -> str:
    if timed_out:
        return f"timed out after {limits.seconds:g}s"
    last_line = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    if returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and "CPU" in last_line):
        return f"timed out after {cpu:g}s of CPU time"
    if returncode == 0:
        return ""
    if "MemoryError" in last_line or returncode == -signal.SIGSEGV and "MemoryError" in stderr:
        return f"memory limit exceeded ({limits.memory_mb} MB)"
    if returncode == -signal.SIGXFSZ or "File too large" in last_line:
        return f"output file too large (limit {limits.file_mb} MB)"
    if "BlockingIOError" in last_line or "Resource temporarily unavailable" in last_line:
        return f"process limit reached ({limits.processes} processes)"
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown"
        return f"killed by signal {number} ({name})"
    if "Traceback (most recent call last)" in stderr or "Error" in last_line:
        return last_line[:300]
    return f"exit code {returncode}" + (f": {last_line[:200]}" if last_line else "")


def _read_capped(path: Path, limit: int = OUTPUT_CHARS) -> str:
    """The head and the tail of a file: the start of the output and the end of a traceback."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        if size <= limit:
            data = stream.read()
            return data.decode("utf-8", errors="replace")
        head = stream.read(limit // 2).decode("utf-8", errors="replace")
        stream.seek(size - limit // 2)
        tail = stream.read().decode("utf-8", errors="replace")
    return f"{head}\n[... {size - limit} bytes cut ...]\n{tail}"


def _read_protections(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # the child died before its report, or was killed while writing it


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    """Kill every process running as `uid` (kill(-1) as that uid reaches exactly those)."""
    try:
        subprocess.run(
            ["kill", "-KILL", "-1"],
            user=uid,
            group=uid,
            extra_groups=[],
            env={"PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        pass


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                pass
    return count


def _give_to(workdir: Path, uid: int) -> None:
    """Hand the working directory and everything in it to the sandbox uid."""
    os.chown(workdir, uid, uid)
    for root, dirs, files in os.walk(workdir):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)


_uid_isolation: bool | None = None  # probed once per process


def _sandbox_uid() -> int | None:
    """A fresh uid for this run when running as root and the kernel lets us drop to it."""
    global _uid_isolation
    if os.geteuid() != 0 or os.environ.get("T2S_SANDBOX_NO_UID"):
        return None
    if _uid_isolation is None:
        _uid_isolation = _probe_uid_isolation()
    if not _uid_isolation:
        return None
    return _SANDBOX_UID_BASE + secrets.randbelow(1 << 24)


def _probe_uid_isolation() -> bool:
    probe = Path(tempfile.mkdtemp(prefix="t2s-sandbox-probe-"))
    try:
        uid = _SANDBOX_UID_BASE + secrets.randbelow(1 << 24)
        _give_to(probe, uid)
        code = "import os, xml.dom.minidom\nprint(os.getuid())\n"
        result = _run(code, probe, SandboxLimits(seconds=30), uid)
        return result.ok and result.stdout.strip() == str(uid)
    except OSError:
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)
