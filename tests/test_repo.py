"""The skills repository: init, reading, patch branches, notes, refs, the lock, merges, blame."""

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from t2s.errors import RepoError, SkillError
from t2s.repo import (
    NOTES_REF,
    ZERO_SHA,
    PatchBranch,
    PatchCommit,
    SkillsRepo,
)
from t2s.skill import Skill

ROOT = Path(__file__).resolve().parent.parent

SKILL_MD = """\
---
name: sheet-skill
description: A small spreadsheet skill for tests.
---
# Sheet skill

## Workflow
- Open the workbook.
- Read the [formulas](references/formulas.md) note.

## Checks
- Verify the answer cells.
"""


def make_skill_dir(path: Path, skill_md: str = SKILL_MD) -> Path:
    (path / "references").mkdir(parents=True)
    (path / "SKILL.md").write_text(skill_md)
    (path / "references" / "formulas.md").write_text("# Formulas\nUse SUM for totals.\n")
    return path


def git(repo_path, *args, check=True):
    process = subprocess.run(["git", "-C", str(repo_path), *args], capture_output=True,
                             text=True, check=False)
    if check and process.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {process.stderr}")
    return process.stdout


@pytest.fixture
def repo(tmp_path):
    return SkillsRepo.init(tmp_path / "skills_repo", from_dir=make_skill_dir(tmp_path / "skill"))


def add_line(skill: Skill, line: str, after: str = "- Verify the answer cells.\n") -> Skill:
    text = skill.files["SKILL.md"]
    assert after in text
    return skill.with_file("SKILL.md", text.replace(after, after + line + "\n"))


def patch_commit(n=1, **fields):
    values = {"lesson": f"Lesson number {n}", "reasoning": f"Reasoning for patch {n}.",
                  "run": "run1", "task": f"task-{n}", "trajectory": f"traj-{n}", "outcome": "failure",
                  "analyst": "error", "model": "smollm2", "note": f"Task task-{n} failed; fixed by X."}
    values.update(fields)
    return PatchCommit(**values)


# -- init and open ---------------------------------------------------------------------------


def test_init_from_starter_skill(tmp_path):
    repo = SkillsRepo.init(tmp_path / "skills_repo")
    assert repo.created
    assert repo.current_branch() == "main"
    skill = repo.read_skill("main")
    starter = Skill.from_dir(ROOT / "t2s" / "starter_skill")
    assert skill == starter
    assert repo.read_file("main", ".gitattributes") == "*.md merge=t2s-skill\n"
    # One root commit, the work tree checked out and clean.
    assert git(repo.path, "rev-list", "--count", "main").strip() == "1"
    assert (repo.path / "SKILL.md").read_text() == starter.files["SKILL.md"]
    assert git(repo.path, "status", "--porcelain") == ""
    assert repo.trailers("main")["T2S-Init"].startswith("starter skill")
    driver = git(repo.path, "config", "merge.t2s-skill.driver").strip()
    assert driver == f"{sys.executable} -m t2s.mergedriver %O %A %B %L %P"
    assert git(repo.path, "config", "notes.displayRef").strip() == NOTES_REF
    assert git(repo.path, "check-attr", "merge", "SKILL.md").strip() == "SKILL.md: merge: t2s-skill"
    # No staging directory left beside it.
    assert [p.name for p in tmp_path.iterdir()] == ["skills_repo"]


def test_init_from_dir_keeps_the_skill_and_executable_scripts(tmp_path):
    source = make_skill_dir(tmp_path / "skill")
    (source / "scripts").mkdir()
    (source / "scripts" / "check.py").write_text("print('ok')\n")
    (source / "scripts" / "check.py").chmod(0o755)
    repo = SkillsRepo.init(tmp_path / "repo", from_dir=source)
    assert repo.read_skill("main") == Skill.from_dir(source)
    assert repo.tree_entries("main")["scripts/check.py"][0] == "100755"
    assert "deepening mode" in repo.trailers("main")["T2S-Init"]


def test_init_refuses_an_invalid_skill_and_creates_nothing(tmp_path):
    source = make_skill_dir(tmp_path / "skill", SKILL_MD.replace("sheet-skill", "Sheet Skill"))
    with pytest.raises(SkillError, match="not a valid skill.*kebab"):
        SkillsRepo.init(tmp_path / "repo", from_dir=source)
    assert not (tmp_path / "repo").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["skill"]


def test_init_refuses_a_non_empty_directory(tmp_path):
    target = tmp_path / "notes"
    target.mkdir()
    (target / "todo.txt").write_text("keep me")
    with pytest.raises(RepoError, match="exists and is not empty"):
        SkillsRepo.init(target)
    assert [p.name for p in target.iterdir()] == ["todo.txt"]


def test_init_refuses_another_git_repository(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    (other / "README").write_text("hello")
    git(other, "add", "README")
    git(other, "commit", "-q", "-m", "unrelated")
    with pytest.raises(RepoError, match="git repository of something else"):
        SkillsRepo.init(other)
    with pytest.raises(RepoError, match="something else"):
        SkillsRepo.open(other)
    assert git(other, "config", "--get", "merge.t2s-skill.driver", check=False) == ""


def test_init_inside_a_project_keeps_the_repository_out_of_its_status(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    git(project, "init", "-q", "-b", "main")
    (project / "notes.txt").write_text("x")
    repo = SkillsRepo.init(project / "skills_repo", from_dir=make_skill_dir(tmp_path / "skill"))
    assert repo.ignored_by == project
    assert git(project, "status", "--porcelain") == "?? notes.txt\n"
    assert "/skills_repo/" in (project / ".git" / "info" / "exclude").read_text()
    # A project that already ignores it is left alone.
    (project / ".gitignore").write_text("/other/\n")
    other = SkillsRepo.init(project / "other", from_dir=tmp_path / "skill")
    assert other.ignored_by is None
    assert "/other/" not in (project / ".git" / "info" / "exclude").read_text()
    # Outside any work tree there is nothing to do.
    assert SkillsRepo.init(tmp_path / "alone", from_dir=tmp_path / "skill").ignored_by is None


def test_init_on_an_existing_t2s_repository_does_nothing(repo, tmp_path):
    before = repo.resolve("main")
    again = SkillsRepo.init(repo.path, from_dir=make_skill_dir(tmp_path / "other"))
    assert not again.created
    assert again.resolve("main") == before


def test_init_into_an_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    repo = SkillsRepo.init(tmp_path / "empty", from_dir=make_skill_dir(tmp_path / "skill"))
    assert repo.created and (tmp_path / "empty" / ".git").is_dir()


def test_open_without_a_repository(tmp_path):
    with pytest.raises(RepoError, match=r"no skills repository at .*run `t2s init`"):
        SkillsRepo.open(tmp_path / "missing")
    # A directory inside another repository is not that repository.
    with pytest.raises(RepoError, match="no skills repository"):
        SkillsRepo.open(ROOT / "t2s")


def test_open_a_plain_git_clone_installs_the_merge_config(repo, tmp_path):
    git(tmp_path, "clone", "-q", str(repo.path), "plain")
    assert git(tmp_path / "plain", "config", "--get", "merge.t2s-skill.driver", check=False) == ""
    SkillsRepo.open(tmp_path / "plain")
    assert "t2s.mergedriver" in git(tmp_path / "plain", "config", "merge.t2s-skill.driver")


# -- reading ---------------------------------------------------------------------------------


def test_read_skill_and_files_from_any_ref_without_checkout(repo):
    base = repo.resolve("main")
    patched = add_line(repo.read_skill("main"), "- Compare totals.")
    sha = repo.create_patch_branch("run1", 1, base, patched, patch_commit())
    assert repo.read_skill("t2s/run1/patch/1") == patched
    assert repo.read_skill(sha) == patched
    assert "Compare totals" in repo.read_file("t2s/run1/patch/1", "SKILL.md")
    assert "Compare totals" not in (repo.path / "SKILL.md").read_text()
    assert ".gitattributes" not in repo.read_skill("main").files


def test_unknown_refs_and_files_are_clear_errors(repo):
    with pytest.raises(RepoError, match="unknown ref 'nope'"):
        repo.resolve("nope")
    with pytest.raises(RepoError, match="unknown ref"):
        repo.read_skill("t2s/none/patch/1")
    with pytest.raises(RepoError, match="has no file references/missing.md"):
        repo.read_file("main", "references/missing.md")
    with pytest.raises(RepoError, match="not a revision"):
        repo.resolve("--all")


def test_resolve_patch_shorthand(repo):
    sha = repo.create_patch_branch("run7", 3, repo.resolve("main"),
                                   add_line(repo.read_skill(), "- X."), patch_commit(3))
    assert repo.resolve_patch("run7/3") == sha
    assert repo.resolve_patch("t2s/run7/patch/3") == sha
    assert repo.resolve_patch(sha[:10]) == sha


# -- patch branches --------------------------------------------------------------------------


def test_patch_branch_is_one_commit_on_its_base_with_message_trailers_and_note(repo):
    base = repo.resolve("main")
    patched = add_line(repo.read_skill(), "- Recompute totals after writing formulas.")
    commit = patch_commit(1, extra_trailers={"T2S-Patch-Id": "p-1"})
    sha = repo.create_patch_branch("run1", 1, base, patched, commit)

    assert repo.branches("t2s/run1/") == {"t2s/run1/patch/1": sha}
    assert git(repo.path, "rev-list", "--parents", "-n1", sha).split() == [sha, base]
    assert git(repo.path, "rev-list", "--count", f"{base}..{sha}").strip() == "1"
    message = git(repo.path, "log", "-1", "--format=%B", sha)
    assert message.splitlines()[0] == "Lesson number 1"
    assert "Reasoning for patch 1." in message
    trailers = repo.trailers(sha)
    assert trailers == {
        "T2S-Run": "run1", "T2S-Task": "task-1", "T2S-Trajectory": "traj-1",
        "T2S-Outcome": "failure", "T2S-Analyst": "error", "T2S-Model": "smollm2",
        "T2S-Patch-Id": "p-1",
    }
    # git itself parses the same trailers.
    parsed = git(repo.path, "log", "-1", "--format=%(trailers:key=T2S-Task,valueonly)", sha)
    assert parsed.strip() == "task-1"
    assert repo.read_note(sha) == "Task task-1 failed; fixed by X.\n"
    assert "Notes (t2s):" in git(repo.path, "log", "-1", sha)
    # The base's non-skill files travel along; main, index and work tree are untouched.
    assert repo.read_file(sha, ".gitattributes") == "*.md merge=t2s-skill\n"
    assert repo.resolve("main") == base
    assert git(repo.path, "status", "--porcelain") == ""
    assert git(repo.path, "fsck", "--strict").strip() == ""


def test_patch_message_trims_long_lessons_and_keeps_them_whole_in_the_body():
    long = "When a column holds numbers stored as text, convert them before summing " * 2
    message = PatchCommit(lesson=long + "\nSecond lesson.", reasoning="Why.",
                          task="t\nwith newline").message()
    subject, blank, *rest = message.splitlines()
    assert len(subject) <= 72 and subject.endswith("...") and blank == ""
    body = "\n".join(rest)
    assert f"- {long.strip()}" in body and "- Second lesson." in body
    assert "T2S-Task: t with newline" in body
    assert "T2S-Model" not in body  # empty trailers are left out


def test_patch_branch_is_idempotent_and_refuses_a_different_patch_under_the_same_name(repo):
    base = repo.resolve("main")
    patched = add_line(repo.read_skill(), "- A.")
    first = repo.create_patch_branch("run1", 1, base, patched, patch_commit())
    again = repo.create_patch_branch("run1", 1, base, patched, patch_commit())
    assert again == first
    with pytest.raises(RepoError, match="already holds a different patch"):
        repo.create_patch_branch("run1", 1, base, add_line(repo.read_skill(), "- B."),
                                 patch_commit())
    assert repo.branches("t2s/") == {"t2s/run1/patch/1": first}


def test_many_patch_branches_in_one_batch(repo):
    base = repo.resolve("main")
    skill = repo.read_skill()
    items = [PatchBranch("big", n, base, add_line(skill, f"- Lesson {n}."), patch_commit(n))
             for n in range(200)]
    shas = repo.create_patch_branches(items)
    assert len(set(shas)) == 200
    branches = repo.branches("t2s/big/patch/")
    assert len(branches) == 200 and branches["t2s/big/patch/137"] == shas[137]
    assert "- Lesson 137." in repo.read_file(shas[137], "SKILL.md")
    assert repo.read_note(shas[199]) == "Task task-199 failed; fixed by X.\n"
    # git reads every note back (fan-out layout included).
    assert len(git(repo.path, "notes", "--ref", NOTES_REF, "list").splitlines()) == 200
    assert git(repo.path, "fsck", "--strict").strip() == ""
    # A second batch re-uses nothing wrongly and keeps the earlier notes.
    more = repo.create_patch_branches(
        [PatchBranch("big2", n, base, add_line(skill, f"- More {n}."), patch_commit(n))
         for n in range(5)])
    assert repo.read_note(more[4]) == repo.read_note(shas[4])
    assert len(git(repo.path, "notes", "--ref", NOTES_REF, "list").splitlines()) == 205


def test_maintain_packs_loose_objects_when_git_says_so(repo):
    base = repo.resolve("main")
    repo.create_patch_branches([
        PatchBranch("gc", n, base, add_line(repo.read_skill(), f"- L{n}."), patch_commit(n))
        for n in range(20)])
    assert repo.maintain() is False  # far below git's threshold: nothing to do
    git(repo.path, "config", "gc.auto", "50")
    assert repo.maintain() is True
    counts = git(repo.path, "count-objects", "-v")
    assert "count: 0" in counts and "packs: 1" in counts
    assert repo.read_note(repo.resolve("t2s/gc/patch/7")) == "Task task-7 failed; fixed by X.\n"
    # Objects the writer knew as loose are now packed; writing goes on fine.
    sha = repo.create_patch_branch("gc", 99, base, add_line(repo.read_skill(), "- L7."),
                                   patch_commit(99))
    assert git(repo.path, "fsck", "--strict", "--no-dangling").strip() == ""
    assert repo.read_skill(sha).files["SKILL.md"].count("- L7.") == 1


def test_an_interrupted_patch_write_leaves_no_branch_and_a_sound_repository(repo, monkeypatch):
    base = repo.resolve("main")
    items = [PatchBranch("run1", n, base, add_line(repo.read_skill(), f"- L{n}."), patch_commit(n))
             for n in range(3)]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(repo, "update_refs", killed)
    with pytest.raises(KeyboardInterrupt):
        repo.create_patch_branches(items)
    monkeypatch.undo()
    assert repo.branches("t2s/") == {}
    assert git(repo.path, "notes", "--ref", NOTES_REF, "list") == ""
    assert "error" not in git(repo.path, "fsck", "--strict")
    # Running it again completes the work.
    assert len(repo.create_patch_branches(items)) == 3
    assert len(repo.branches("t2s/run1/")) == 3


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from t2s.repo import PatchBranch, PatchCommit, SkillsRepo
    repo = SkillsRepo.open(sys.argv[1])
    base, skill = repo.resolve("main"), repo.read_skill()
    text = skill.files["SKILL.md"]
    items = [PatchBranch("k", n, base, skill.with_file("SKILL.md", text + f"- x {n}\\n"),
                         PatchCommit(f"lesson {n}", note=f"note {n}")) for n in range(500)]
    # Should the kill come late, it still lands before any ref moves.
    repo.update_refs = lambda *args, **kwargs: time.sleep(60)
    repo.create_patch_branches(items)
""")


def test_a_killed_patch_writer_leaves_no_branch_and_fsck_passes(repo):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(repo.path)], env=env)
    try:
        for _ in range(600):
            counts = dict(line.split(": ") for line in git(repo.path, "count-objects", "-v")
                          .splitlines())
            if int(counts["count"]) > 200 or writer.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -9  # killed, not finished or crashed
    assert int(counts["count"]) > 200  # it died mid-way through writing objects
    assert set(repo.branches()) == {"main"}
    assert git(repo.path, "for-each-ref", NOTES_REF) == ""
    assert git(repo.path, "fsck", "--strict", "--no-dangling").strip() == ""
    assert "garbage: 0" in git(repo.path, "count-objects", "-v")


def test_notes_coexist_with_notes_git_wrote(repo):
    main = repo.resolve("main")
    git(repo.path, "notes", "--ref", NOTES_REF, "add", "-m", "written by git", main)
    sha = repo.create_patch_branch("run1", 1, main, add_line(repo.read_skill(), "- A."),
                                   patch_commit())
    assert repo.read_note(main) == "written by git\n"
    assert repo.read_note(sha) == "Task task-1 failed; fixed by X.\n"
    repo.add_note(main, "replaced by t2s")
    assert repo.read_note(main) == "replaced by t2s\n"
    assert len(git(repo.path, "notes", "--ref", NOTES_REF, "list").splitlines()) == 2
    git(repo.path, "notes", "--ref", NOTES_REF, "append", "-m", "appended by git", sha)
    assert repo.read_note(sha).endswith("appended by git\n")
    assert repo.read_note(repo.resolve("main")) == "replaced by t2s\n"


def test_commits_honour_the_git_identity_environment(repo, monkeypatch):
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Analyst Bot")
    monkeypatch.setenv("GIT_AUTHOR_DATE", "2020-01-02T03:04:05+0000")
    fresh = SkillsRepo.open(repo.path)
    sha = fresh.commit_tree(fresh.tree_of("main"), [fresh.resolve("main")], "Subject\n")
    info = fresh.commit_info(sha)
    assert info.author == "Analyst Bot"
    assert info.date.startswith("2020-01-02T03:04:05")
    assert git(repo.path, "log", "-1", "--format=%cn", sha).strip() == "T2S Test"


# -- refs ------------------------------------------------------------------------------------


def test_commit_tree_refuses_what_is_not_a_tree_or_a_commit(repo):
    main = repo.resolve("main")
    with pytest.raises(RepoError, match="is not a tree"):
        repo.commit_tree(main, [], "x\n")  # a commit, not a tree
    with pytest.raises(RepoError, match="is not a tree"):
        repo.commit_tree("main", [], "x\n")
    with pytest.raises(RepoError, match="unknown ref 'nope'"):
        repo.commit_tree(repo.tree_of("main"), ["nope"], "x\n")
    # A parent given by name is resolved to its sha.
    sha = repo.commit_tree(repo.tree_of("main"), ["main"], "x\n")
    assert repo.commit_info(sha).parents == [main]


def test_update_refs_is_all_or_nothing(repo):
    main = repo.resolve("main")
    repo.update_refs({"t2s/r/a": main, "t2s/r/b": main}, expected_old={"t2s/r/a": ZERO_SHA})
    assert set(repo.branches("t2s/r/")) == {"t2s/r/a", "t2s/r/b"}
    with pytest.raises(RepoError, match="could not update refs"):
        # c is new, but a must not exist yet: neither moves.
        repo.update_refs({"t2s/r/c": main, "t2s/r/a": main}, expected_old={"t2s/r/a": ZERO_SHA})
    assert set(repo.branches("t2s/r/")) == {"t2s/r/a", "t2s/r/b"}
    repo.update_refs({"t2s/r/a": None})
    assert set(repo.branches("t2s/r/")) == {"t2s/r/b"}


def test_delete_refs_by_prefix_spares_main(repo):
    main = repo.resolve("main")
    repo.update_refs({"t2s/x/patch/1": main, "t2s/x/patch/2": main, "t2s/y/patch/1": main})
    assert repo.delete_refs("t2s/x/") == ["t2s/x/patch/1", "t2s/x/patch/2"]
    assert set(repo.branches()) == {"main", "t2s/y/patch/1"}
    assert repo.delete_refs("") == ["t2s/y/patch/1"]
    assert set(repo.branches()) == {"main"}


def test_move_branch_updates_the_checked_out_work_tree_and_refuses_local_changes(repo):
    base = repo.resolve("main")
    sha = repo.create_patch_branch("run1", 1, base, add_line(repo.read_skill(), "- New."),
                                   patch_commit())
    repo.move_branch("main", sha)
    assert repo.resolve("main") == sha
    assert "- New." in (repo.path / "SKILL.md").read_text()
    assert git(repo.path, "status", "--porcelain") == ""
    (repo.path / "SKILL.md").write_text("local edit\n")
    with pytest.raises(RepoError, match="uncommitted changes"):
        repo.move_branch("main", base)
    assert repo.resolve("main") == sha
    git(repo.path, "checkout", "-q", "--detach")
    with pytest.raises(RepoError, match="HEAD is detached"):
        repo.check_clean()


# -- the lock --------------------------------------------------------------------------------

LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from t2s.repo import SkillsRepo
    repo = SkillsRepo.open(sys.argv[1])
    with repo.lock(timeout=30):
        with open(sys.argv[2], "a") as log:
            log.write(f"start {sys.argv[3]}\\n")
        print("locked", flush=True)
        time.sleep(float(sys.argv[4]))
        with open(sys.argv[2], "a") as log:
            log.write(f"end {sys.argv[3]}\\n")
""")


def _holder(repo, log, name, seconds):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(repo.path), str(log), name, str(seconds)],
        stdout=subprocess.PIPE, text=True, env=env,
    )


def test_lock_serialises_two_processes(repo, tmp_path):
    log = tmp_path / "lock.log"
    first = _holder(repo, log, "a", 0.4)
    assert first.stdout.readline().strip() == "locked"
    second = _holder(repo, log, "b", 0.0)
    assert first.wait(20) == 0 and second.wait(20) == 0
    assert log.read_text().splitlines() == ["start a", "end a", "start b", "end b"]


def test_a_busy_lock_names_its_holder_then_frees(repo, tmp_path):
    holder = _holder(repo, tmp_path / "lock.log", "a", 1.0)
    assert holder.stdout.readline().strip() == "locked"
    busy = rf"is busy \(locked by pid {holder.pid}\)"
    with pytest.raises(RepoError, match=busy), repo.lock(timeout=0.1):
        pass
    assert holder.wait(20) == 0
    with repo.lock(timeout=1), repo.lock(timeout=0):  # re-entrant within one process
        pass


def test_the_lock_is_held_by_the_process_not_the_instance_or_thread(repo):
    other = SkillsRepo.open(repo.path)
    entered = []
    with repo.lock(timeout=0):
        with other.lock(timeout=0):
            entered.append("other instance")
        thread_repo = SkillsRepo.open(repo.path)

        def in_thread():
            with thread_repo.lock(timeout=0):
                entered.append("thread")

        worker = threading.Thread(target=in_thread)
        worker.start()
        worker.join()
    assert entered == ["other instance", "thread"]
    # Released for real: another process can take it now.
    probe = subprocess.run(["flock", "-n", str(repo.git_dir / "t2s-lock"), "true"], check=False)
    assert probe.returncode == 0


def test_lock_timeout_from_the_environment(repo, monkeypatch):
    monkeypatch.setenv("T2S_LOCK_TIMEOUT", "soon")
    with pytest.raises(RepoError, match="T2S_LOCK_TIMEOUT='soon' is not a number"), repo.lock():
        pass


# -- merges and blame ------------------------------------------------------------------------


def test_merge_tree_clean_merge_of_different_files(repo):
    base = repo.resolve("main")
    skill = repo.read_skill()
    a = repo.create_patch_branch("m", 1, base, add_line(skill, "- From A."), patch_commit(1))
    b_skill = skill.with_file("references/formulas.md", "# Formulas\nUse SUMIF for totals.\n")
    b = repo.create_patch_branch("m", 2, base, b_skill, patch_commit(2))
    result = repo.merge_tree(a, b)
    assert result.clean and result.conflicted_paths == []
    merged = repo.commit_tree(result.tree, [a, b], "Merge\n")
    skill = repo.read_skill(merged)
    assert "- From A." in skill.files["SKILL.md"]
    assert "SUMIF" in skill.files["references/formulas.md"]
    assert git(repo.path, "status", "--porcelain") == ""


def test_merge_tree_conflicts_are_reported_with_the_conflicted_tree(repo):
    base = repo.resolve("main")
    skill = repo.read_skill()
    a = repo.create_patch_branch("c", 1, base, skill.with_file("scripts/x.py", "a = 1\n"),
                                 patch_commit(1))
    b = repo.create_patch_branch("c", 2, base, skill.with_file("scripts/x.py", "a = 2\n"),
                                 patch_commit(2))
    result = repo.merge_tree(a, b)
    assert not result.clean
    assert result.conflicted_paths == ["scripts/x.py"]
    assert any("CONFLICT" in message for message in result.messages)
    content = git(repo.path, "cat-file", "blob", f"{result.tree}:scripts/x.py")
    assert "<<<<<<<" in content and "a = 1" in content and "a = 2" in content


def test_merge_tree_runs_the_configured_merge_driver(repo):
    base = repo.resolve("main")
    skill = repo.read_skill()
    a = repo.create_patch_branch("d", 1, base, add_line(skill, "- A."), patch_commit(1))
    b = repo.create_patch_branch("d", 2, base, add_line(skill, "- B."), patch_commit(2))
    git(repo.path, "config", "merge.t2s-skill.driver", 'printf "settled by $T2S_TEST\\n" > %A')
    result = repo.merge_tree(a, b, env={"T2S_TEST": "the driver"})
    assert result.clean
    assert git(repo.path, "cat-file", "blob", f"{result.tree}:SKILL.md") == "settled by the driver\n"
    git(repo.path, "config", "merge.t2s-skill.driver", "false")
    failed = repo.merge_tree(a, b)
    assert not failed.clean and failed.conflicted_paths == ["SKILL.md"]


def test_merge_tree_with_an_explicit_base(repo):
    base = repo.resolve("main")
    skill = repo.read_skill()
    a = repo.create_patch_branch("e", 1, base, skill.with_file("scripts/x.py", "v = 1\n"),
                                 patch_commit(1))
    b_skill = skill.with_file("scripts/x.py", "v = 1\n").with_file("references/more.md", "# M\n")
    b = repo.create_patch_branch("e", 2, base, b_skill, patch_commit(2))
    # Against main both add scripts/x.py identically: clean. Against a as base, b only adds more.md.
    assert repo.merge_tree(a, b).clean
    result = repo.merge_tree(a, b, base=a)
    assert result.clean
    assert git(repo.path, "ls-tree", "--name-only", "-r", result.tree).split() == [
        ".gitattributes", "SKILL.md", "references/formulas.md", "references/more.md",
        "scripts/x.py"]


def test_merge_tree_of_unrelated_histories_is_an_error(repo, tmp_path):
    orphan = repo.commit_tree(repo.tree_of("main"), [], "orphan\n")
    with pytest.raises(RepoError, match="cannot merge"):
        repo.merge_tree("main", orphan)


def test_blame_follows_merges_down_to_patch_commits(repo):
    base = repo.resolve("main")
    skill = repo.read_skill()
    a = repo.create_patch_branch("b", 1, base, add_line(skill, "- From task one."),
                                 patch_commit(1))
    b = repo.create_patch_branch(
        "b", 2, base, add_line(skill, "- From task two.", after="- Open the workbook.\n"),
        patch_commit(2))
    # A third trajectory taught the same lesson as the first.
    c = repo.create_patch_branch("b", 3, base, add_line(skill, "- From  task one."),
                                 patch_commit(3))
    merged = repo.merge_tree(a, b)
    assert merged.clean
    node = repo.commit_tree(merged.tree, [a, b], "Merge 2 patches\n\nT2S-Level: 1\n")
    # The top merge keeps node's tree (c's line is the same lesson as a's).
    top = repo.commit_tree(repo.tree_of(node), [node, c], "Merge\n\nT2S-Level: 2\n")
    repo.move_branch("main", top)
    lines = {line.text: line for line in repo.blame("main", "SKILL.md")}
    one = lines["- From task one."]
    assert one.sha == a and one.trailers["T2S-Task"] == "task-1"
    assert [source.sha for source in one.sources] == [a, c]
    assert [source.trailers["T2S-Trajectory"] for source in one.sources] == ["traj-1", "traj-3"]
    two = lines["- From task two."]
    assert two.trailers["T2S-Trajectory"] == "traj-2" and [s.sha for s in two.sources] == [b]
    assert lines["- Open the workbook."].sha == base
    assert "T2S-Init" in lines["- Open the workbook."].trailers
    assert lines["- Open the workbook."].sources == []
    assert [line.number for line in repo.blame("main", "SKILL.md")][:3] == [1, 2, 3]
    with pytest.raises(RepoError, match="has no file"):
        repo.blame("main", "references/none.md")


def test_blame_of_a_line_the_merge_wrote_names_the_patches_that_proposed_it(repo):
    base = repo.resolve("main")
    skill = repo.read_skill()
    a = repo.create_patch_branch("w", 1, base, add_line(skill, "- Check totals."), patch_commit(1))
    b = repo.create_patch_branch("w", 2, base, add_line(skill, "- Check headers."),
                                 patch_commit(2))
    # The merge (driver or operator) wrote both lessons in one line of its own.
    written = add_line(skill, "- Check totals. - Check headers.")
    merge = repo.commit_tree(repo.write_tree_from_skill(written, base_tree=base), [a, b],
                             "Merge\n")
    own = {line.text: line for line in repo.blame(merge, "SKILL.md")}[
        "- Check totals. - Check headers."]
    assert own.sha == merge and own.sources == []
    same = add_line(skill, "- Check totals.")
    merge2 = repo.commit_tree(repo.write_tree_from_skill(same, base_tree=base), [b, a], "M\n")
    line = {line.text: line for line in repo.blame(merge2, "SKILL.md")}["- Check totals."]
    assert line.sha == a and [s.sha for s in line.sources] == [a]


def test_log_lists_merges_and_patches_with_trailers_and_notes(repo):
    base = repo.resolve("main")
    a = repo.create_patch_branch("l", 1, base, add_line(repo.read_skill(), "- A."),
                                 patch_commit(1))
    merge = repo.commit_tree(repo.tree_of(a), [base, a], "Keep A\n\nT2S-Support: 1\n")
    repo.update_refs({"t2s/l/result": merge})
    infos = repo.log(["t2s/l/result"])
    assert [info.sha for info in infos] == [merge, a, base]
    by_sha = {info.sha: info for info in infos}
    assert by_sha[merge].is_merge and by_sha[merge].trailers == {"T2S-Support": "1"}
    assert "t2s/l/result" in by_sha[merge].refs
    assert by_sha[a].note == "Task task-1 failed; fixed by X.\n"
    assert by_sha[a].subject == "Lesson number 1"
    assert repo.log(["t2s/l/result"], first_parent=True)[1].sha == base


def test_run_ids_that_cannot_name_a_branch_are_refused(repo):
    base = repo.resolve("main")
    for bad in ("two words", "a/b", "..", ".hidden", "x.lock", ""):
        with pytest.raises(RepoError, match="cannot be part of a branch name"):
            repo.create_patch_branch(bad, 1, base, repo.read_skill(), patch_commit())
    assert set(repo.branches()) == {"main"}


def test_open_re_registers_a_driver_whose_interpreter_is_gone(repo):
    git(repo.path, "config", "merge.t2s-skill.driver", "/gone/venv/bin/python -m t2s.mergedriver")
    SkillsRepo.open(repo.path)
    assert git(repo.path, "config", "merge.t2s-skill.driver").startswith(sys.executable)
