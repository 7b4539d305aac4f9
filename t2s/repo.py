"""The skills repository: every git call t2s makes goes through `SkillsRepo`.

A skills repository is an ordinary git repository whose `main` holds one skill at its root
(SKILL.md, references/, scripts/). Every patch is a branch `t2s/<run>/patch/<n>` with exactly one
commit on the base it was proposed against; consolidation writes merge commits; evidence hangs on
commits as notes under `refs/notes/t2s`.

Patch branches are written without a work tree or an index: blobs, trees and commits go straight
into the object database (gitdb's in-process loose-object writer, which GitPython is built on;
its own `store` spawns `git hash-object` per object: ~4.6 ms against ~0.6 ms, measured), and
refs move last, in one `git update-ref --stdin` transaction. An interrupted write therefore
leaves at most unreferenced objects, never a half-made branch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import git
from gitdb.base import IStream
from gitdb.db.loose import LooseObjectDB

from t2s.errors import RepoError, SkillError
from t2s.fsutil import atomic_write_text
from t2s.skill import SKILL_DIRS, SKILL_FILE, Skill, validate_skill

DEFAULT_PATH = "./skills_repo"
MAIN = "main"
NOTES_REF = "refs/notes/t2s"
MERGE_DRIVER = "t2s-skill"
GITATTRIBUTES = f"*.md merge={MERGE_DRIVER}\n"
# A repository-config marker: `open` recognises t2s repositories by it (or, for a plain
# `git clone`, by the merge driver named in .gitattributes on main).
MARKER_KEY = ("t2s", "repositoryVersion")
REPOSITORY_VERSION = "1"
LOCK_FILE = "t2s-lock"
LOCK_TIMEOUT_ENV = "T2S_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 60.0
SUBJECT_CHARS = 72
GC_AUTO_DEFAULT = 6700  # git's default for gc.auto
ZERO_SHA = "0" * 40
TRAILER_ORDER = (
    ("T2S-Run", "run"),
    ("T2S-Task", "task"),
    ("T2S-Trajectory", "trajectory"),
    ("T2S-Outcome", "outcome"),
    ("T2S-Analyst", "analyst"),
    ("T2S-Model", "model"),
)
STARTER_SKILL_DIR = Path(__file__).resolve().parent / "starter_skill"

_TRAILER_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_FIELD = "\x1f"
# Field order of the `git log` format that CommitInfo is parsed from.
_LOG_FORMAT = _FIELD.join(
    ["%H", "%P", "%T", "%an", "%ae", "%aI", "%B", "%N", "%(trailers:only,unfold)", "%D"]
)


# -- records -------------------------------------------------------------------------------


@dataclass
class PatchCommit:
    """What a patch commit says: the lesson as subject, the reasoning as body, then trailers."""

    lesson: str
    reasoning: str = ""
    run: str = ""
    task: str = ""
    trajectory: str = ""
    outcome: str = ""
    analyst: str = ""
    model: str = ""
    note: str = ""
    extra_trailers: dict[str, str] = field(default_factory=dict)

    def message(self) -> str:
        lessons = [" ".join(line.split()) for line in self.lesson.splitlines()]
        lessons = [line for line in lessons if line]
        reasoning = self.reasoning.strip()
        first = lessons[0] if lessons else (reasoning.splitlines() or [""])[0].strip()
        subject = _trim(first or f"Patch from task {self.task or 'unknown'}", SUBJECT_CHARS)
        paragraphs = []
        if len(lessons) > 1 or (lessons and subject != lessons[0]):
            paragraphs.append("Lessons:\n" + "\n".join(f"- {lesson}" for lesson in lessons))
        if reasoning:
            paragraphs.append(reasoning)
        trailers = [(key, getattr(self, attr)) for key, attr in TRAILER_ORDER]
        trailers += list(self.extra_trailers.items())
        paragraphs.append(format_trailers(trailers))
        return "\n\n".join([subject] + [p for p in paragraphs if p]) + "\n"


@dataclass
class PatchBranch:
    """One item of `create_patch_branches`: a patched skill to commit on `base_sha`."""

    run_id: str
    n: int
    base_sha: str
    skill: Skill
    commit: PatchCommit

    @property
    def branch(self) -> str:
        return patch_branch_name(self.run_id, self.n)


@dataclass
class MergeTreeResult:
    """A three-way merge computed by `git merge-tree --write-tree` (ort), touching no work tree.

    `tree` always exists: on conflicts it holds the merge driver's output or conflict markers.
    """

    tree: str
    clean: bool
    conflicted_paths: list[str]
    messages: list[str]


@dataclass
class CommitInfo:
    sha: str
    parents: list[str]
    tree: str
    author: str
    email: str
    date: str
    subject: str
    body: str
    trailers: dict[str, str]
    note: str
    refs: list[str]

    @property
    def is_merge(self) -> bool:
        return len(self.parents) > 1

    @property
    def message(self) -> str:
        return f"{self.subject}\n\n{self.body}".rstrip() + "\n" if self.body else self.subject + "\n"


@dataclass
class BlameLine:
    """One line of a file, the commit that introduced it and that commit's trailers.

    `sources` lists every patch commit under the ref that added this same line (whitespace
    aside), the blamed commit first when it is one: git blame names one parent of a merge, but
    a lesson several patches proposed was taught by each of their trajectories.
    """

    number: int
    text: str
    sha: str
    subject: str
    trailers: dict[str, str]
    sources: list[CommitInfo] = field(default_factory=list)


@dataclass
class SyncResult:
    """What `push`, `pull` or `clone` did, one human-readable line per ref."""

    remote: str
    updates: list[str]


# -- helpers -------------------------------------------------------------------------------


def patch_branch_name(run_id: str, n: int) -> str:
    return f"t2s/{check_run_id(run_id)}/patch/{n}"


def check_run_id(run_id: str) -> str:
    """`run_id` if it can be one component of a branch name; else RepoError."""
    if not _RUN_ID.match(run_id) or ".." in run_id or run_id.endswith(".lock"):
        raise RepoError(
            f"run id {run_id!r} cannot be part of a branch name: use letters, digits, "
            "'.', '_' and '-' (not starting with '.')"
        )
    return run_id


def result_branch_name(run_id: str) -> str:
    return f"t2s/{check_run_id(run_id)}/result"


def format_trailers(trailers: Iterable[tuple[str, object]]) -> str:
    """`Key: value` lines; empty values are left out, values are folded onto one line."""
    lines = []
    for key, value in trailers:
        if not _TRAILER_KEY.match(key):
            raise RepoError(f"{key!r} is not a valid trailer key: use letters, digits and '-'")
        text = " ".join(str(value).split())
        if text:
            lines.append(f"{key}: {text}")
    return "\n".join(lines)


def _trim(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _full_ref(ref: str) -> str:
    return ref if ref.startswith("refs/") else f"refs/heads/{ref}"


def _parse_trailers(text: str) -> dict[str, str]:
    """Trailers as a dict; a key that repeats keeps every value, joined by ", "."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and _TRAILER_KEY.match(key.strip()):
            key, value = key.strip(), value.strip()
            found[key] = f"{found[key]}, {value}" if key in found else value
    return found


def _is_skill_path(path: str) -> bool:
    return path == SKILL_FILE or path.split("/", 1)[0] in SKILL_DIRS


def _lock_timeout() -> float:
    value = os.environ.get(LOCK_TIMEOUT_ENV)
    try:
        return float(value) if value else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        raise RepoError(f"{LOCK_TIMEOUT_ENV}={value!r} is not a number of seconds") from None


# Locks this process holds, by lock-file path: [pid, depth, open file]. The pid tells a forked
# child that an inherited entry is its parent's, not its own.
_held_locks: dict[str, list] = {}
_held_guard = threading.Lock()


# -- the repository ------------------------------------------------------------------------


class SkillsRepo:
    """A t2s skills repository (a non-bare git repository with the skill at its root)."""

    def __init__(self, repo: git.Repo):
        self.repo = repo
        self.path = Path(repo.working_tree_dir)
        self.git_dir = Path(repo.git_dir)
        # Set by `init`: False when `init` found an existing t2s repository and did nothing.
        self.created = False
        # Set by `init`: the enclosing project repository told to ignore this one, if any.
        self.ignored_by: Path | None = None
        self._ident: tuple[str, str] | None = None
        # GitPython's own store spawns `git hash-object` per object; gitdb's loose-object
        # writer does the same work in-process, which is what makes batches of patches cheap.
        self._loose = LooseObjectDB(repo.odb.root_path())
        self._known_objects: set[str] = set()
        self._tree_entries: dict[str, dict[str, tuple[str, str]]] = {}

    def __repr__(self) -> str:
        return f"SkillsRepo({str(self.path)!r})"

    # -- creating and opening ----------------------------------------------------------------

    @classmethod
    def init(cls, path: Path | str = DEFAULT_PATH, from_dir: Path | str | None = None) -> SkillsRepo:
        """Create a repository whose `main` holds the starter skill or the skill in `from_dir`.

        The repository is built in a temporary sibling directory and renamed into place, so an
        interrupted `init` leaves nothing behind. On an existing t2s repository it does nothing
        (`created` is False).
        """
        target = Path(path).expanduser().absolute()
        if target.exists():
            if not target.is_dir():
                raise RepoError(f"{target} is a file: give a new or empty directory for the repository")
            existing = _existing_repo(target)
            if existing is not None:
                repo = cls._from_git(existing, target)
                repo.created = False
                return repo
            if any(target.iterdir()):
                raise RepoError(
                    f"{target} exists and is not empty: give a new or empty directory to `t2s init`"
                )
        skill, modes, origin = _initial_skill(from_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.init-", dir=target.parent))
        try:
            built = cls(git.Repo.init(staging, initial_branch=MAIN))
            built.install_config()
            tree = built.write_tree_from_skill(skill, extra={".gitattributes": GITATTRIBUTES},
                                               modes=modes)
            message = (
                f"Initial skill: {skill.name or 'unnamed'}\n\n"
                f"{format_trailers([('T2S-Init', origin)])}\n"
            )
            sha = built.commit_tree(tree, [], message)
            built.update_refs({MAIN: sha}, expected_old={MAIN: ZERO_SHA})
            built.repo.git.read_tree("--reset", "-u", "HEAD")
            built.repo.close()
            if target.exists():
                target.rmdir()
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        repo = cls.open(target)
        repo.created = True
        repo.ignored_by = _ignore_in_enclosing_repo(target)
        return repo

    @classmethod
    def open(cls, path: Path | str = DEFAULT_PATH) -> SkillsRepo:
        target = Path(path).expanduser().absolute()
        existing = _existing_repo(target)
        if existing is None:
            raise RepoError(f"no skills repository at {target}: run `t2s init`")
        return cls._from_git(existing, target)

    @classmethod
    def _from_git(cls, found: git.Repo, target: Path) -> SkillsRepo:
        repo = cls(found)
        config = repo.repo.config_reader("repository")
        if not (config.has_section(MARKER_KEY[0]) and config.has_option(*MARKER_KEY)):
            if not repo._main_has_t2s_attributes():
                raise RepoError(
                    f"{target} is a git repository of something else, not a t2s skills "
                    "repository: give another path"
                )
            # A plain `git clone` carries .gitattributes but not the merge-driver config.
            repo.install_config()
        elif not _interpreter_exists(config.get_value(f'merge "{MERGE_DRIVER}"', "driver", "")):
            # The interpreter the driver was registered with is gone (a rebuilt venv).
            repo.install_config()
        return repo

    def _main_has_t2s_attributes(self) -> bool:
        try:
            text = self.read_file(MAIN, ".gitattributes")
        except RepoError:
            return False
        return f"merge={MERGE_DRIVER}" in text

    def install_config(self) -> None:
        """(Re-)write the repository config t2s relies on; git does not carry it across a clone."""
        driver = f"{shlex.quote(sys.executable)} -m t2s.mergedriver %O %A %B %L %P"
        with self.repo.config_writer("repository") as config:
            config.set_value(f'merge "{MERGE_DRIVER}"', "name", "t2s rules for skill markdown")
            config.set_value(f'merge "{MERGE_DRIVER}"', "driver", driver)
            # `git log` shows t2s notes, and rebase/amend carry them to the rewritten commit.
            config.set_value("notes", "displayRef", NOTES_REF)
            config.set_value("notes", "rewriteRef", NOTES_REF)
            config.set_value(*MARKER_KEY, REPOSITORY_VERSION)

    # -- the lock ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[None]:
        """Serialise t2s processes on this repository (flock on a file in .git).

        Waits up to `timeout` seconds (default $T2S_LOCK_TIMEOUT or 60), then raises RepoError
        naming the holder's pid. Re-entrant within one process (any thread, any SkillsRepo
        instance): the operations that write take it themselves, callers take it around
        read-decide-write sequences.
        """
        path = str(self.git_dir / LOCK_FILE)
        with _held_guard:
            entry = _held_locks.get(path)
            reentrant = entry is not None and entry[0] == os.getpid()
            if reentrant:
                entry[1] += 1
        if not reentrant:
            handle = self._acquire(path, _lock_timeout() if timeout is None else timeout)
            entry = [os.getpid(), 1, handle]
            with _held_guard:
                _held_locks[path] = entry
        try:
            yield
        finally:
            with _held_guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del _held_locks[path]
                    handle = entry[2]
                    handle.seek(0)
                    handle.truncate()
                    handle.flush()
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                    handle.close()

    def _acquire(self, path: str, wait: float):
        # Held open past this function: the flock lives as long as the file stays open.
        try:
            handle = open(path, "a+")  # noqa: SIM115
        except OSError as error:
            raise RepoError(f"cannot lock {self.path}: {error.strerror} ({path})") from None
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as error:
                    if error.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    pid = handle.read().strip()
                    holder = f"pid {pid}" if pid else "another process"
                    raise RepoError(
                        f"repository {self.path} is busy (locked by {holder}): wait for it "
                        "to finish, or stop that process"
                    )
                time.sleep(0.05)
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            return handle
        except BaseException:
            handle.close()
            raise

    # -- reading -----------------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """The commit sha `ref` names (a branch, tag, sha or any git revision)."""
        if not ref or ref.startswith("-") or "\n" in ref:
            raise RepoError(f"{ref!r} is not a revision: give a branch name or a commit sha")
        sha = self._lookup(f"{ref}^{{commit}}")
        if sha is None:
            raise RepoError(f"unknown ref {ref!r} in {self.path}: see `t2s log` or `git branch`")
        return sha

    def _lookup(self, revision: str) -> str | None:
        """The object sha `revision` names, or None; asks git's long-lived `cat-file
        --batch-check`, so the hundreds of lookups a batch makes cost no process each."""
        try:
            sha = self.repo.git.get_object_header(revision)[0]
        except ValueError:
            return None
        return sha.decode() if isinstance(sha, bytes) else sha

    def resolve_patch(self, name: str) -> str:
        """A patch by branch name, `RUN/N` shorthand for `t2s/RUN/patch/N`, or any revision."""
        shorthand = re.fullmatch(r"([^/\s]+)/(\d+)", name)
        if shorthand:
            with contextlib.suppress(RepoError):
                return self.resolve(patch_branch_name(*shorthand.groups()))
        return self.resolve(name)

    def tree_of(self, ref: str) -> str:
        return self._commit_fields(self.resolve(ref))[0]

    def tree_entries(self, treeish: str) -> dict[str, tuple[str, str]]:
        """{path: (mode, blob sha)} of every file in a tree or commit, recursively.

        Read through git's long-lived cat-file (no process per call) and cached by sha (objects
        never change), so many patches on one base read it once.
        """
        key = treeish if _HEX40.match(treeish) else self.resolve(treeish)
        if key not in self._tree_entries:
            kind = self._object_type(key)
            if kind not in ("commit", "tree"):
                raise RepoError(f"{treeish} is a {kind}, not a commit or a tree")
            tree = self._commit_fields(key)[0] if kind == "commit" else key
            self._tree_entries[key] = self._files_under(tree, "")
        return self._tree_entries[key]

    def _files_under(self, tree: str, prefix: str) -> dict[str, tuple[str, str]]:
        files = {}
        for name, (mode, sha) in self._tree_listing(tree).items():
            if mode == "40000":
                files.update(self._files_under(sha, f"{prefix}{name}/"))
            elif mode != "160000":  # a submodule is no file of the skill
                files[f"{prefix}{name}"] = (mode, sha)
        return files

    def _object_type(self, sha: str) -> str:
        try:
            return self.repo.odb.info(bytes.fromhex(sha)).type.decode()
        except (ValueError, git.BadName, git.BadObject):
            raise RepoError(f"no object {sha} in {self.path}") from None

    def read_skill(self, ref: str = MAIN) -> Skill:
        """The skill at `ref`, read from the object database (no checkout)."""
        entries = self.tree_entries(self.resolve(ref))
        files = {}
        for path, (_mode, sha) in entries.items():
            if _is_skill_path(path):
                files[path] = self._read_blob(sha, f"{ref}:{path}")
        if SKILL_FILE not in files:
            raise RepoError(f"{ref} holds no SKILL.md: it is not a skill commit")
        return Skill(files)

    def read_file(self, ref: str, path: str) -> str:
        entry = self.tree_entries(self.resolve(ref)).get(path)
        if entry is None:
            raise RepoError(f"{ref} has no file {path}")
        return self._read_blob(entry[1], f"{ref}:{path}")

    def _read_blob(self, sha: str, label: str) -> str:
        data = self.repo.odb.stream(bytes.fromhex(sha)).read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise RepoError(f"{label} is not UTF-8 text: t2s skills hold text files only") from None

    def branches(self, prefix: str = "", merged_into: str | None = None) -> dict[str, str]:
        """{branch name: sha} of local branches whose name starts with `prefix` (with
        `merged_into`: only those whose tip that commit contains)."""
        merged = [f"--merged={merged_into}"] if merged_into else []
        output = self.repo.git.for_each_ref(
            "--format=%(objectname) %(refname)", *merged, "refs/heads/"
        )
        found = {}
        for line in output.splitlines():
            sha, ref = line.split(" ", 1)
            name = ref[len("refs/heads/"):]
            if name.startswith(prefix):
                found[name] = sha
        return found

    def current_branch(self) -> str | None:
        """The checked-out branch, or None when HEAD is detached."""
        try:
            return self.repo.git.symbolic_ref("--quiet", "--short", "HEAD")
        except git.GitCommandError:
            return None

    # -- writing objects ---------------------------------------------------------------------

    def _store(self, kind: bytes, data: bytes) -> str:
        sha = hashlib.sha1(b"%s %d\0" % (kind, len(data)) + data).hexdigest()
        if sha not in self._known_objects:
            self._loose.store(IStream(kind, len(data), BytesIO(data)))
            self._known_objects.add(sha)
        return sha

    def write_tree_from_skill(
        self,
        skill: Skill,
        base_tree: str | None = None,
        extra: dict[str, str] | None = None,
        modes: dict[str, str] | None = None,
    ) -> str:
        """Write the skill's blobs and trees (no work tree, no index) and return the root tree.

        Files of `base_tree` that are not skill files (.gitattributes...) are kept; file modes
        come from `modes`, then from `base_tree`, else 100644. `extra` adds non-skill files.
        """
        base = self.tree_entries(base_tree) if base_tree else {}
        # The base's blobs exist already: unchanged files are not written again.
        self._known_objects.update(sha for _mode, sha in base.values())
        modes = modes or {}
        files: dict[str, tuple[str, str]] = {
            path: entry for path, entry in base.items() if not _is_skill_path(path)
        }
        contents = dict(skill.files)
        contents.update(extra or {})
        for path, text in contents.items():
            data = text.encode("utf-8")
            mode = modes.get(path) or base.get(path, ("100644",))[0]
            files[path] = (mode, self._store(b"blob", data))
        return self._write_trees(files)

    def _write_trees(self, files: dict[str, tuple[str, str]]) -> str:
        root: dict = {}
        for path, entry in files.items():
            node = root
            *directories, name = path.split("/")
            for directory in directories:
                node = node.setdefault(directory, {})
                if not isinstance(node, dict):
                    raise RepoError(f"{path}: a file and a directory share a name")
            node[name] = entry
        return self._write_tree_node(root)

    def _write_tree_node(self, node: dict) -> str:
        entries = []
        for name, value in node.items():
            if isinstance(value, dict):
                entries.append((name.encode() + b"/", b"40000", name, self._write_tree_node(value)))
            else:
                mode, sha = value
                entries.append((name.encode(), mode.encode(), name, sha))
        # git orders tree entries by name, comparing a directory as if it ended with '/'.
        entries.sort(key=lambda entry: entry[0])
        data = b"".join(
            mode + b" " + name.encode() + b"\0" + bytes.fromhex(sha)
            for _key, mode, name, sha in entries
        )
        return self._store(b"tree", data)

    def _identity(self, role: str) -> str:
        """`Name <email> timestamp tz` for AUTHOR or COMMITTER, as `git commit-tree` would use."""
        if self._ident is None:
            try:
                author = self.repo.git.var("GIT_AUTHOR_IDENT")
                committer = self.repo.git.var("GIT_COMMITTER_IDENT")
            except git.GitCommandError as error:
                raise RepoError(
                    f"git cannot name the commit author ({_git_reason(str(error.stderr))}): set "
                    "user.name and user.email (git config --global user.name ...)"
                ) from None
            self._ident = (author, committer)
        ident = self._ident[0 if role == "AUTHOR" else 1]
        if os.environ.get(f"GIT_{role}_DATE"):
            return ident
        name_email = ident.rsplit(" ", 2)[0]
        offset = -(time.altzone if time.localtime().tm_isdst > 0 else time.timezone)
        sign = "+" if offset >= 0 else "-"
        hours, minutes = divmod(abs(offset) // 60, 60)
        return f"{name_email} {int(time.time())} {sign}{hours:02d}{minutes:02d}"

    def commit_tree(self, tree: str, parents: Iterable[str], message: str) -> str:
        """Write a commit object (as `git commit-tree` would, honouring GIT_AUTHOR_*/COMMITTER_*).

        No ref moves: pass the sha to `update_refs`.
        """
        if not _HEX40.match(tree) or self._object_type(tree) != "tree":
            raise RepoError(f"{tree!r} is not a tree of {self.path}")
        parents = [self.resolve(parent) for parent in parents]
        lines = [f"tree {tree}"]
        lines += [f"parent {parent}" for parent in parents]
        lines.append(f"author {self._identity('AUTHOR')}")
        lines.append(f"committer {self._identity('COMMITTER')}")
        text = "\n".join(lines) + "\n\n" + message.rstrip("\n") + "\n"
        return self._store(b"commit", text.encode("utf-8"))

    # -- refs --------------------------------------------------------------------------------

    def update_refs(
        self,
        updates: dict[str, str | None],
        expected_old: dict[str, str] | None = None,
    ) -> None:
        """Move refs all at once or not at all (`git update-ref --stdin` transaction).

        A short name means a branch. A new value of None deletes the ref. `expected_old` maps a
        ref to the sha it must have now (ZERO_SHA: must not exist yet).
        """
        expected = {_full_ref(ref): sha for ref, sha in (expected_old or {}).items()}
        commands = ["start"]
        for ref, new in updates.items():
            full = _full_ref(ref)
            old = expected.get(full, "")
            if new is None:
                commands.append(f"delete {full} {old}".rstrip())
            else:
                commands.append(f"update {full} {new} {old}".rstrip())
        commands += ["prepare", "commit"]
        self._git_stdin(["update-ref", "--stdin"], "\n".join(commands) + "\n",
                        "could not update refs")

    def delete_refs(self, prefix: str) -> list[str]:
        """Delete every branch whose name starts with `prefix` (never main or the checked-out one)."""
        with self.lock():
            keep = {MAIN, self.current_branch()}
            doomed = {
                name: sha for name, sha in self.branches(prefix).items() if name not in keep
            }
            if doomed:
                self.update_refs({name: None for name in doomed}, expected_old=doomed)
            return sorted(doomed)

    def move_branch(self, branch: str, sha: str) -> None:
        """Point `branch` at `sha`; when it is checked out, update the work tree too.

        Refuses (nothing changed) when the checked-out branch has uncommitted changes.
        """
        with self.lock():
            full = _full_ref(branch)
            old = self._ref_sha(full)
            if old == sha:
                return
            checked_out = self.current_branch() == branch and old is not None
            if checked_out:
                self.check_clean()
                # Two-tree read-tree updates index and work tree only where old and new differ.
                self.repo.git.read_tree("-m", "-u", old, sha)
            try:
                self.update_refs({full: sha}, expected_old={full: old or ZERO_SHA})
            except BaseException:
                if checked_out:
                    self.repo.git.read_tree("-m", "-u", sha, old)
                raise

    def maintain(self) -> bool:
        """Pack the loose objects once there are more than git's `gc.auto` (default 6700).

        Every patch leaves a handful of loose objects (tens of KiB on disk); packed, thousands
        take a fraction of that. git's own `gc --auto` only samples one object directory, so
        count them all. Returns True when it packed.
        """
        with self.lock():
            counts = dict(line.split(": ", 1)
                          for line in self.repo.git.count_objects("-v").splitlines())
            try:
                limit = int(self.repo.git.config("--get", "gc.auto"))
            except (git.GitCommandError, ValueError):
                limit = GC_AUTO_DEFAULT
            if limit <= 0 or int(counts["count"]) <= limit:
                return False
            self.repo.git.gc("--quiet")
            return True

    def check_clean(self) -> None:
        """RepoError when the work tree has uncommitted changes or HEAD is detached."""
        if self.current_branch() is None:
            raise RepoError(f"HEAD is detached in {self.path}: run `git checkout {MAIN}` there first")
        status = self.repo.git.status("--porcelain", "--untracked-files=no")
        if status.strip():
            raise RepoError(
                f"{self.path} has uncommitted changes: commit or discard them first "
                f"(git -C {self.path} status)"
            )

    def _ref_sha(self, full_ref: str) -> str | None:
        return self._lookup(full_ref) if full_ref.startswith("refs/") else None

    def _git_stdin(self, args: list[str], text: str, what: str) -> str:
        process = subprocess.run(
            ["git", *args], cwd=self.path, input=text, capture_output=True, text=True, check=False
        )
        if process.returncode != 0:
            raise RepoError(f"{what}: {_git_reason(process.stderr)}")
        return process.stdout

    # -- notes -------------------------------------------------------------------------------

    def add_note(self, sha: str, text: str) -> None:
        """Attach `text` to commit `sha` under refs/notes/t2s (replacing an earlier note)."""
        with self.lock():
            self.update_refs(*self._notes_update({sha: text}))

    def read_note(self, sha: str) -> str | None:
        try:
            return self.repo.git.notes("--ref", NOTES_REF, "show", self.resolve(sha)) + "\n"
        except git.GitCommandError:
            return None

    def _notes_update(self, notes: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """Write a notes commit adding `notes`; return (updates, expected_old) for update_refs.

        Notes are stored with one level of fan-out (`ab/cdef...`), as git itself does for more
        than a few hundred notes, so adding a note rewrites two small trees, not one huge one.
        """
        old = self._ref_sha(NOTES_REF)
        root = self._tree_listing(self._commit_fields(old)[0]) if old else {}
        buckets: dict[str, dict[str, tuple[str, str]]] = {}
        for commit_sha, text in notes.items():
            key = commit_sha[:2]
            if key not in buckets:
                buckets[key] = self._note_bucket(root.get(key), key)
            # A note git wrote flat at the root would otherwise shadow or duplicate ours.
            root.pop(commit_sha, None)
            blob = self._store(b"blob", (text.rstrip("\n") + "\n").encode("utf-8"))
            buckets[key][commit_sha[2:]] = ("100644", blob)
        for key, bucket in buckets.items():
            root[key] = ("40000", self._write_tree_node(bucket))
        tree = self._write_tree_node(root)
        count = len(notes)
        message = f"Notes added by t2s ({count} note{'s' if count != 1 else ''})\n"
        commit = self.commit_tree(tree, [old] if old else [], message)
        return {NOTES_REF: commit}, {NOTES_REF: old or ZERO_SHA}

    def _tree_listing(self, tree: str) -> dict[str, tuple[str, str]]:
        """{name: (mode, sha)} of one tree level, read through git's persistent cat-file."""
        data = self.repo.odb.stream(bytes.fromhex(tree)).read()
        entries, index = {}, 0
        while index < len(data):
            space = data.index(b" ", index)
            nul = data.index(b"\0", space)
            name = data[space + 1:nul].decode("utf-8", "surrogateescape")
            entries[name] = (data[index:space].decode(), data[nul + 1:nul + 21].hex())
            index = nul + 21
        return entries

    def _commit_fields(self, commit: str) -> tuple[str, list[str]]:
        """(tree, parents) of a commit, read from its object."""
        header = self.repo.odb.stream(bytes.fromhex(commit)).read().split(b"\n\n", 1)[0]
        lines = header.decode("utf-8", "replace").splitlines()
        tree = lines[0].split()[1]
        return tree, [line.split()[1] for line in lines if line.startswith("parent ")]

    def _note_bucket(self, entry: tuple[str, str] | None, prefix: str) -> dict:
        """The notes under fan-out directory `prefix`, flattened to `{rest-of-sha: entry}`."""
        if entry is None or entry[0] != "40000":
            return {}
        bucket = {}
        for name, (mode, sha) in self._tree_listing(entry[1]).items():
            if mode == "40000":
                for rest, deeper in self._note_bucket((mode, sha), prefix + name).items():
                    bucket[name + rest] = deeper
            else:
                bucket[name] = (mode, sha)
        return bucket

    # -- patch branches ----------------------------------------------------------------------

    def create_patch_branch(
        self, run_id: str, n: int, base_sha: str, skill: Skill, commit: PatchCommit
    ) -> str:
        """One commit on `base_sha` holding `skill`, on branch `t2s/<run>/patch/<n>`.

        Idempotent: an existing branch with the same tree and base is returned as is.
        """
        return self.create_patch_branches([PatchBranch(run_id, n, base_sha, skill, commit)])[0]

    def create_patch_branches(self, items: list[PatchBranch]) -> list[str]:
        """Write every patch commit, then create all branches and notes in one ref transaction."""
        with self.lock():
            shas: list[str] = []
            new_refs: dict[str, str] = {}
            notes: dict[str, str] = {}
            bases: dict[str, str] = {}
            for item in items:
                if item.base_sha not in bases:
                    bases[item.base_sha] = self.resolve(item.base_sha)
                base = bases[item.base_sha]
                tree = self.write_tree_from_skill(item.skill, base_tree=base)
                branch = item.branch
                if branch in new_refs:
                    raise RepoError(f"patch branch {branch} appears twice in one batch")
                existing = self._ref_sha(f"refs/heads/{branch}")
                if existing is not None:
                    shas.append(self._existing_patch(branch, existing, base, tree))
                    continue
                sha = self.commit_tree(tree, [base], item.commit.message())
                new_refs[branch] = sha
                if item.commit.note.strip():
                    notes[sha] = item.commit.note
                shas.append(sha)
            if new_refs:
                updates, expected = self._notes_update(notes) if notes else ({}, {})
                updates.update(new_refs)
                expected.update({branch: ZERO_SHA for branch in new_refs})
                self.update_refs(updates, expected_old=expected)
            return shas

    def _existing_patch(self, branch: str, sha: str, base: str, tree: str) -> str:
        if self._commit_fields(sha) == (tree, [base]):
            return sha
        raise RepoError(
            f"branch {branch} already holds a different patch: delete it "
            f"(git branch -D {branch}) or use another run id"
        )

    # -- merging -----------------------------------------------------------------------------

    def merge_tree(
        self, a: str, b: str, base: str | None = None, env: dict[str, str] | None = None
    ) -> MergeTreeResult:
        """Three-way merge of commits `a` and `b` with ort; the repo's merge drivers run.

        With `base`, merge as if `base` were the merge base: git 2.39 has no --merge-base, so
        the two trees are first committed on `base` (unreferenced objects). `env` adds
        environment variables for git and the merge drivers it runs (consolidation passes the
        support map to t2s.mergedriver this way).
        """
        left, right = self.resolve(a), self.resolve(b)
        if base is not None:
            base_sha = self.resolve(base)
            left = self.commit_tree(self.tree_of(left), [base_sha], "t2s merge side A\n")
            right = self.commit_tree(self.tree_of(right), [base_sha], "t2s merge side B\n")
        status, stdout, stderr = self.repo.git.merge_tree(
            "--write-tree", "--messages", "--name-only", "-z", left, right,
            with_extended_output=True, with_exceptions=False, strip_newline_in_stdout=False,
            env=env,
        )
        if status not in (0, 1):
            raise RepoError(f"cannot merge {a} and {b}: {_git_reason(stderr)}")
        fields = stdout.split("\0")
        end = fields.index("", 1) if "" in fields[1:] else len(fields)
        conflicted = list(dict.fromkeys(fields[1:end]))
        return MergeTreeResult(fields[0], status == 0, conflicted, _merge_messages(fields[end + 1:]))

    # -- history -----------------------------------------------------------------------------

    def commit_info(self, ref: str) -> CommitInfo:
        return self.log([self.resolve(ref)], max_count=1, walk=False)[0]

    def trailers(self, ref: str) -> dict[str, str]:
        return self.commit_info(ref).trailers

    def log(
        self,
        refs: Iterable[str],
        max_count: int | None = None,
        first_parent: bool = False,
        walk: bool = True,
        paths: Iterable[str] = (),
    ) -> list[CommitInfo]:
        """Commits reachable from `refs`, newest first (`walk=False`: just those commits)."""
        revisions = [self.resolve_patch(ref) for ref in refs]
        if not revisions:
            return []
        options = ["-z", f"--format={_LOG_FORMAT}", f"--notes={NOTES_REF}"]
        options.append("--topo-order" if walk else "--no-walk=unsorted")
        if max_count is not None:
            options.append(f"--max-count={max_count}")
        if first_parent:
            options.append("--first-parent")
        output = self.repo.git.log(*options, *revisions, "--", *paths,
                                   strip_newline_in_stdout=False)
        return [_parse_commit(record) for record in output.split("\0") if record.strip()]

    def blame(self, ref: str, path: str) -> list[BlameLine]:
        """Each line of `path` at `ref` with the commit that introduced it (through merges)
        and every patch commit that proposed the same line."""
        sha = self.resolve_patch(ref)
        if path not in self.tree_entries(sha):
            raise RepoError(f"{ref} has no file {path}")
        output = self.repo.git.blame("--porcelain", sha, "--", path, strip_newline_in_stdout=False)
        lines: list[tuple[int, str, str]] = []
        current = ""
        for raw in output.split("\n"):
            if raw.startswith("\t"):
                lines.append((len(lines) + 1, raw[1:], current))
            elif raw and _HEX40.match(raw[:40]) and raw[40:41] == " ":
                current = raw[:40]
        added = self._lines_added_by_patches(sha, path)
        wanted = {commit for *_, commit in lines}
        wanted |= {source for shas in added.values() for source in shas}
        infos = {info.sha: info for info in self.log(sorted(wanted), walk=False)}
        result = []
        for number, text, commit in lines:
            proposers = added.get(" ".join(text.split()), [])
            if commit in proposers:
                sources = [commit] + [other for other in proposers if other != commit]
            elif infos[commit].is_merge:  # text the merge driver or operator wrote
                sources = proposers
            else:  # the initial skill or a hand edit: no patch taught it
                sources = []
            result.append(BlameLine(number, text, commit, infos[commit].subject,
                                    infos[commit].trailers, [infos[c] for c in sources]))
        return result

    def _lines_added_by_patches(self, sha: str, path: str) -> dict[str, list[str]]:
        """{line text (whitespace-normalised): [patch commits adding it]} under `sha`."""
        output = self.repo.git.log(
            "--no-merges", "--full-history",
            "--format=%x00%H %(trailers:key=T2S-Task,valueonly,separator=%x2C)",
            "--patch", "--unified=0", "--no-color", "--no-ext-diff", sha, "--", path,
        )
        added: dict[str, list[str]] = {}
        for record in output.split("\0")[1:]:
            header, _, diff = record.partition("\n")
            commit, _, task = header.partition(" ")
            if not task.strip():
                continue
            for line in diff.splitlines():
                if line.startswith("+") and not line.startswith("+++"):
                    text = " ".join(line[1:].split())
                    if text and commit not in added.setdefault(text, []):
                        added[text].append(commit)
        return added

    def diff(self, a: str, b: str, stat: bool = False) -> str:
        """The skill's diff between two revisions."""
        options = ["--stat"] if stat else ["--patch"]
        return self.repo.git.diff(*options, self.resolve_patch(a), self.resolve_patch(b), "--")

    def show_diff(self, ref: str) -> str:
        """The diff a commit made against its first parent (empty for a root commit)."""
        info = self.commit_info(ref)
        if not info.parents:
            return self.repo.git.show("--format=", "--patch", info.sha)
        return self.diff(info.parents[0], info.sha)

    # -- sharing -----------------------------------------------------------------------------

    def push(self, remote: str = "origin") -> SyncResult:
        """Push main, every `t2s/*/result` branch and refs/notes/t2s to `remote`, atomically."""
        with self.lock():
            refspecs = [f"refs/heads/{MAIN}:refs/heads/{MAIN}",
                        "refs/heads/t2s/*/result:refs/heads/t2s/*/result"]
            if self._ref_sha(NOTES_REF):
                refspecs.append(f"{NOTES_REF}:{NOTES_REF}")
            status, stdout, stderr = self.repo.git.push(
                # All refs or none: a rejected main must not leave its notes half pushed.
                "--porcelain", "--atomic", remote, *refspecs,
                with_extended_output=True, with_exceptions=False,
            )
            updates = []
            for line in stdout.splitlines():
                parts = line.split("\t")
                if len(parts) >= 3 and parts[0] in {" ", "+", "-", "*", "!", "="}:
                    destination = parts[1].split(":")[-1].removeprefix("refs/heads/")
                    updates.append(f"{destination}: {parts[2]}")
            if status != 0:
                rejected = [u for u in updates if "rejected" in u]
                if any("fetch first" in u or "non-fast-forward" in u for u in rejected):
                    raise RepoError(
                        f"push to {remote} rejected ({'; '.join(rejected)}): run "
                        f"`t2s pull {remote}` first"
                    )
                if rejected:
                    raise RepoError(f"push to {remote} rejected: {'; '.join(rejected)}")
                raise RepoError(f"cannot push to {remote}: {_git_reason(stderr)}")
            return SyncResult(remote, updates)

    def pull(self, remote: str = "origin") -> SyncResult:
        """Fetch main, result branches and notes from `remote`, then bring main up to date.

        Diverged mains are merged with the repository's merge rules; a merge with conflicts is
        refused (nothing changed on main) with the command to resolve it by hand.
        """
        with self.lock():
            remote_name = self._remote_label(remote)
            tracking = f"refs/remotes/{remote_name}"
            remote_notes = f"refs/notes/remotes/{remote_name}/t2s"
            self._fetch(remote, [
                f"+refs/heads/{MAIN}:{tracking}/{MAIN}",
                f"+refs/heads/t2s/*/result:{tracking}/t2s/*/result",
                f"+{NOTES_REF}:{remote_notes}",
            ])
            theirs = self._ref_sha(f"{tracking}/{MAIN}")
            if theirs is None:
                raise RepoError(f"{remote} has no {MAIN} branch: it is not a t2s skills repository")
            # Fetching only wrote tracking refs; decide about main before any local ref moves.
            new_main, main_update = self._plan_main(theirs, f"{remote_name}/{MAIN}")
            updates = self._adopt_results(tracking)
            updates += self._merge_notes(remote_notes)
            if new_main is not None:
                self.move_branch(MAIN, new_main)
            return SyncResult(remote, updates + [main_update])

    def _remote_label(self, remote: str) -> str:
        if remote in [r.name for r in self.repo.remotes]:
            return remote
        # A URL or path: name its tracking refs by a short digest of it.
        return "url-" + hashlib.sha1(remote.encode()).hexdigest()[:8]

    def _fetch(self, remote: str, refspecs: list[str]) -> None:
        """Fetch `refspecs`, leaving out exact refs the remote lacks (a fresh remote has no
        notes yet), which git would otherwise refuse."""
        status, listing, stderr = self.repo.git.ls_remote(
            remote, with_extended_output=True, with_exceptions=False
        )
        if status == 0:
            present = {line.split("\t", 1)[1] for line in listing.splitlines() if "\t" in line}
            refspecs = [spec for spec in refspecs
                        if "*" in spec or spec.lstrip("+").split(":", 1)[0] in present]
            if not refspecs:
                return
            status, _stdout, stderr = self.repo.git.fetch(
                "--no-tags", "--quiet", remote, *refspecs,
                with_extended_output=True, with_exceptions=False,
            )
        if status != 0:
            raise RepoError(f"cannot fetch from {remote}: {_git_reason(stderr)}")

    def _adopt_results(self, tracking: str) -> list[str]:
        """Create local result branches for fetched ones we lack, fast-forward ones we have."""
        output = self.repo.git.for_each_ref("--format=%(objectname) %(refname)", f"{tracking}/t2s")
        local = self.branches("t2s/")
        updates, refs, expected = [], {}, {}
        for line in output.splitlines():
            sha, ref = line.split(" ", 1)
            branch = ref[len(tracking) + 1:]
            mine = local.get(branch)
            if mine == sha:
                continue
            if mine is not None and not self.is_ancestor(mine, sha):
                updates.append(f"{branch}: kept local (differs from the remote's)")
                continue
            refs[branch] = sha
            expected[branch] = mine or ZERO_SHA
            updates.append(f"{branch}: {'updated' if mine else 'new'}")
        if refs:
            self.update_refs(refs, expected_old=expected)
        return updates

    def _merge_notes(self, remote_notes: str) -> list[str]:
        theirs = self._ref_sha(remote_notes)
        if theirs is None:
            return []
        mine = self._ref_sha(NOTES_REF)
        if mine == theirs or (mine and self.is_ancestor(theirs, mine)):
            return []
        if mine is None or self.is_ancestor(mine, theirs):
            self.update_refs({NOTES_REF: theirs}, expected_old={NOTES_REF: mine or ZERO_SHA})
            return ["notes: updated"]
        # Both sides added notes: git's cat_sort_uniq strategy merges them without a work tree.
        self.repo.git.notes("--ref", NOTES_REF, "merge", "--quiet", "-s", "cat_sort_uniq",
                            remote_notes)
        return ["notes: merged"]

    def _plan_main(self, theirs: str, label: str) -> tuple[str | None, str]:
        """(new sha for main or None, what happens), refusing before anything moves when main
        is checked out with local changes or the two mains conflict."""
        mine = self._ref_sha(f"refs/heads/{MAIN}")
        if mine == theirs or (mine and self.is_ancestor(theirs, mine)):
            return None, f"{MAIN}: up to date"
        if self.current_branch() in (MAIN, None):
            self.check_clean()
        if mine is None or self.is_ancestor(mine, theirs):
            return theirs, f"{MAIN}: fast-forwarded to {theirs[:7]}"
        merged = self.merge_tree(mine, theirs)
        if not merged.clean:
            raise RepoError(
                f"{MAIN} and {label} both changed {', '.join(merged.conflicted_paths)} in ways "
                f"the merge rules cannot settle: run `git merge {label}` in {self.path} and "
                "resolve by hand"
            )
        message = f"Merge {label} into {MAIN}\n\n{format_trailers([('T2S-Pull', label)])}\n"
        sha = self.commit_tree(merged.tree, [mine, theirs], message)
        return sha, f"{MAIN}: merged {label} ({sha[:7]})"

    def is_ancestor(self, older: str, newer: str) -> bool:
        """Whether `newer` contains `older` in its history (a commit contains itself)."""
        status, _out, _err = self.repo.git.merge_base(
            "--is-ancestor", older, newer, with_extended_output=True, with_exceptions=False
        )
        return status == 0

    @classmethod
    def clone(cls, url: str, path: Path | str = DEFAULT_PATH) -> SkillsRepo:
        """Clone a shared skills repository, with its notes, result branches and merge config."""
        target = Path(path).expanduser().absolute()
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise RepoError(f"{target} exists and is not empty: give a new or empty directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.clone-", dir=target.parent))
        try:
            try:
                cloned = git.Repo.clone_from(url, staging, branch=MAIN)
            except git.GitCommandError as error:
                raise RepoError(f"cannot clone {url}: {_git_reason(str(error.stderr))}") from None
            repo = cls(cloned)
            if not repo._main_has_t2s_attributes():
                raise RepoError(f"{url} is not a t2s skills repository (no t2s merge driver on main)")
            repo.install_config()
            repo._fetch("origin", [
                "+refs/heads/t2s/*/result:refs/remotes/origin/t2s/*/result",
                f"+{NOTES_REF}:{NOTES_REF}",
            ])
            repo._adopt_results("refs/remotes/origin")
            cloned.close()
            if target.exists():
                target.rmdir()
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        repo = cls.open(target)
        repo.ignored_by = _ignore_in_enclosing_repo(target)
        return repo


# -- module helpers ------------------------------------------------------------------------


def _ignore_in_enclosing_repo(target: Path) -> Path | None:
    """Keep a skills repository created inside another work tree out of that project's
    `git status`: add it to the project's .git/info/exclude (local, never committed) unless
    the project already ignores it. Returns the project's top directory when it did."""
    outer = git.Git(str(target.parent))
    try:
        top = Path(outer.rev_parse("--show-toplevel"))
    except git.GitCommandError:
        return None  # not inside a work tree
    status, _out, _err = outer.check_ignore(
        "-q", str(target), with_extended_output=True, with_exceptions=False
    )
    if status == 0:
        return None
    exclude = Path(outer.rev_parse("--path-format=absolute", "--git-path", "info/exclude"))
    entry = "/" + target.resolve().relative_to(top.resolve()).as_posix() + "/"
    existing = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
    separator = "" if not existing or existing.endswith("\n") else "\n"
    atomic_write_text(exclude, f"{existing}{separator}# t2s skills repository\n{entry}\n")
    return top


def _interpreter_exists(driver: str) -> bool:
    try:
        words = shlex.split(str(driver))
    except ValueError:
        return False
    return bool(words) and Path(words[0]).exists()


def _existing_repo(target: Path) -> git.Repo | None:
    """The git repository whose work tree is exactly `target`, if any (never a parent's)."""
    if not (target / ".git").exists():
        return None
    try:
        found = git.Repo(target)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None
    if found.bare or Path(found.working_tree_dir).resolve() != target.resolve():
        return None
    return found


def _initial_skill(from_dir: Path | str | None) -> tuple[Skill, dict[str, str], str]:
    """The skill `init` commits, its executable files' modes, and where it came from."""
    source = Path(from_dir) if from_dir is not None else STARTER_SKILL_DIR
    if from_dir is None and not (source / SKILL_FILE).is_file():
        raise RepoError(f"the starter skill is missing from {source}: reinstall t2s")
    skill = Skill.from_dir(source)
    violations = validate_skill(skill)
    if violations:
        more = f" (and {len(violations) - 1} more; run `t2s validate {source}`)" if len(
            violations) > 1 else ""
        raise SkillError(f"{source} is not a valid skill: {violations[0]}{more}")
    modes = {
        path: "100755" for path in skill.files if os.access(source / path, os.X_OK)
    }
    origin = "starter skill (creation mode)" if from_dir is None else (
        f"from {source.resolve().name} (deepening mode)"
    )
    return skill, modes, origin


def _git_reason(stderr: str) -> str:
    """The line of git's stderr that says what went wrong (its first fatal/error line)."""
    lines = [line.strip().strip("'").strip() for line in stderr.splitlines()]
    lines = [line.removeprefix("stderr:").strip() for line in lines if line]
    for line in lines:
        for prefix in ("fatal: ", "error: "):
            if line.startswith(prefix):
                return line.removeprefix(prefix)
    return lines[-1] if lines else "git failed"


def _merge_messages(fields: list[str]) -> list[str]:
    """Parse merge-tree -z messages: records of `<n>, <n paths>, <type>, <message>`."""
    messages, index = [], 0
    while index < len(fields) and fields[index].isdigit():
        index += 1 + int(fields[index])
        if index + 1 < len(fields):
            messages.append(fields[index + 1].strip())
        index += 2
    return messages


def _parse_commit(record: str) -> CommitInfo:
    parts = record.lstrip("\n").split(_FIELD)
    sha, parents, tree, author, email, date, message, note, trailers, refs = parts
    subject, _, body = message.strip("\n").partition("\n")
    return CommitInfo(
        sha=sha,
        parents=parents.split(),
        tree=tree,
        author=author,
        email=email,
        date=date,
        subject=subject.strip(),
        body=body.strip("\n"),
        trailers=_parse_trailers(trailers),
        note=note.strip("\n") + "\n" if note.strip() else "",
        refs=[ref.strip().removeprefix("HEAD -> ").removeprefix("tag: ")
              for ref in refs.split(",") if ref.strip()],
    )
