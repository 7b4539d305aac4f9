"""Sharing a skills repository through an ordinary bare git remote: push, pull, clone."""

import subprocess

import pytest
from click.testing import CliRunner

from t2s.cli import main
from t2s.errors import RepoError
from t2s.repo import NOTES_REF, PatchCommit, SkillsRepo

SKILL_MD = """\
---
name: shared-skill
description: A skill shared between two people.
---
# Shared skill

## Steps
- Load the workbook.
- Write the answer.
"""


def git(path, *args, check=True):
    process = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                             check=False)
    if check and process.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {process.stderr}")
    return process.stdout


def add_after(skill, anchor, line):
    text = skill.files["SKILL.md"]
    return skill.with_file("SKILL.md", text.replace(anchor + "\n", f"{anchor}\n{line}\n"))


def evolve(repo, run_id, line, anchor="- Write the answer."):
    """A patch branch, a result branch merging it, and main accepted to the result."""
    base = repo.resolve("main")
    patch = repo.create_patch_branch(run_id, 1, base, add_after(repo.read_skill(), anchor, line),
                                     PatchCommit(lesson=line, task=f"{run_id}-task",
                                                 trajectory=f"{run_id}-traj",
                                                 note=f"evidence for {run_id}"))
    result = repo.commit_tree(repo.tree_of(patch), [base, patch],
                              f"Merge run {run_id}\n\nT2S-Run: {run_id}\nT2S-Support: 1\n")
    repo.update_refs({f"t2s/{run_id}/result": result})
    repo.move_branch("main", result)
    return patch, result


@pytest.fixture
def shared(tmp_path):
    """Alice's repository with one evolved run, a bare remote `origin`, pushed."""
    skill = tmp_path / "skill"
    skill.mkdir()
    (skill / "SKILL.md").write_text(SKILL_MD)
    alice = SkillsRepo.init(tmp_path / "alice", from_dir=skill)
    bare = tmp_path / "shared.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(alice.path, "remote", "add", "origin", str(bare))
    patch, result = evolve(alice, "run1", "- Save as xlsx.")
    alice.push("origin")
    return alice, bare, patch, result


def test_push_moves_main_results_and_notes_but_not_patch_branches(shared):
    alice, bare, patch, result = shared
    refs = git(bare, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
    assert f"refs/heads/main {result}" in refs
    assert f"refs/heads/t2s/run1/result {result}" in refs
    assert any(line.startswith(f"{NOTES_REF} ") for line in refs)
    assert not any("patch" in line for line in refs)
    assert git(bare, "notes", "--ref", NOTES_REF, "show", patch) == "evidence for run1\n"
    # Pushing again is a no-op that still succeeds.
    assert all("up to date" in update for update in alice.push("origin").updates)


def test_clone_brings_notes_results_and_the_merge_config(shared, tmp_path):
    alice, bare, patch, result = shared
    bob = SkillsRepo.clone(str(bare), tmp_path / "bob")
    assert bob.resolve("main") == result
    assert bob.branches("t2s/") == {"t2s/run1/result": result}
    assert bob.read_note(patch) == "evidence for run1\n"
    assert "t2s.mergedriver" in git(bob.path, "config", "merge.t2s-skill.driver")
    assert git(bob.path, "config", "notes.displayRef").strip() == NOTES_REF
    assert bob.read_skill("main") == alice.read_skill("main")
    assert git(bob.path, "status", "--porcelain") == ""
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bob")] == []
    # Cloned into a project's work tree, it stays out of the project's status.
    git(tmp_path, "init", "-q", "-b", "main", "project")
    inside = SkillsRepo.clone(str(bare), tmp_path / "project" / "skills_repo")
    assert inside.ignored_by == tmp_path / "project"
    assert git(tmp_path / "project", "status", "--porcelain") == ""


def test_clone_refuses_a_repository_that_is_not_a_skills_repository(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    git(plain, "init", "-q", "-b", "main")
    (plain / "README").write_text("x")
    git(plain, "add", "README")
    git(plain, "commit", "-q", "-m", "x")
    with pytest.raises(RepoError, match="not a t2s skills repository"):
        SkillsRepo.clone(str(plain), tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


def test_pull_fast_forwards_main_and_fetches_results_and_notes(shared, tmp_path):
    alice, bare, _patch, _result = shared
    bob = SkillsRepo.clone(str(bare), tmp_path / "bob")
    patch2, result2 = evolve(alice, "run2", "- Check totals.")
    alice.push("origin")
    updates = bob.pull("origin").updates
    assert "t2s/run2/result: new" in updates
    assert "notes: updated" in updates
    assert any(update.startswith("main: fast-forwarded") for update in updates)
    assert bob.resolve("main") == result2
    assert "- Check totals." in (bob.path / "SKILL.md").read_text()
    assert bob.read_note(patch2) == "evidence for run2\n"
    assert bob.pull("origin").updates == ["main: up to date"]


def test_pull_merges_diverged_mains_and_notes(shared, tmp_path):
    alice, bare, _patch, _result = shared
    bob = SkillsRepo.clone(str(bare), tmp_path / "bob")
    alice_patch, _ = evolve(alice, "run2", "- Check totals.")
    alice.push("origin")
    bob_patch, bob_result = evolve(bob, "run3", "- Inspect the sheet.", anchor="- Load the workbook.")
    updates = bob.pull("origin").updates
    assert any(update.startswith("main: merged origin/main") for update in updates)
    assert "notes: merged" in updates
    main = bob.resolve("main")
    assert git(bob.path, "rev-list", "--parents", "-n1", main).split()[1] == bob_result
    text = (bob.path / "SKILL.md").read_text()
    assert "- Check totals." in text and "- Inspect the sheet." in text
    assert bob.read_note(alice_patch) == "evidence for run2\n"
    assert bob.read_note(bob_patch) == "evidence for run3\n"
    # Bob pushes the merge back; Alice pulls it as a fast-forward.
    bob.push("origin")
    alice.pull("origin")
    assert alice.resolve("main") == main


def test_push_of_a_stale_main_is_rejected_with_advice(shared, tmp_path):
    alice, bare, _patch, _result = shared
    bob = SkillsRepo.clone(str(bare), tmp_path / "bob")
    evolve(alice, "run2", "- Check totals.")
    alice.push("origin")
    evolve(bob, "run3", "- Inspect.", anchor="- Load the workbook.")
    before = git(bare, "for-each-ref")
    with pytest.raises(RepoError, match="rejected.*run `t2s pull origin` first"):
        bob.push("origin")
    assert git(bare, "for-each-ref") == before  # bob's run3 result and notes did not go alone


def test_push_to_a_checked_out_branch_says_why(shared, tmp_path):
    alice, *_ = shared
    busy = SkillsRepo.clone(str(alice.path), tmp_path / "busy")
    evolve(alice, "run2", "- Check totals.")
    with pytest.raises(RepoError, match="rejected: main: .*checked out"):
        alice.push(str(busy.path))


def test_pull_refuses_local_changes_and_changes_nothing(shared, tmp_path):
    alice, bare, _patch, _result = shared
    bob = SkillsRepo.clone(str(bare), tmp_path / "bob")
    evolve(alice, "run2", "- Check totals.")
    alice.push("origin")
    before = bob.resolve("main")
    refs_before = git(bob.path, "for-each-ref", "refs/heads", "refs/notes/t2s")
    (bob.path / "SKILL.md").write_text("my local edit\n")
    with pytest.raises(RepoError, match="uncommitted changes"):
        bob.pull("origin")
    assert bob.resolve("main") == before
    assert git(bob.path, "for-each-ref", "refs/heads", "refs/notes/t2s") == refs_before
    assert (bob.path / "SKILL.md").read_text() == "my local edit\n"


def test_plain_git_clone_and_push_work(shared, tmp_path):
    alice, bare, _patch, result = shared
    git(tmp_path, "clone", "-q", str(bare), "carol")
    carol = tmp_path / "carol"
    assert git(carol, "rev-parse", "HEAD").strip() == result
    git(carol, "fetch", "-q", "origin", f"{NOTES_REF}:{NOTES_REF}")
    assert "evidence for run1" in git(carol, "log", "--notes=t2s", "-3")
    # Plain git commit + push, then t2s pull in Alice's repository.
    (carol / "SKILL.md").write_text((carol / "SKILL.md").read_text() + "\n## Notes\n- Manual.\n")
    git(carol, "commit", "-q", "-am", "A manual edit")
    git(carol, "push", "-q", "origin", "main")
    alice.pull("origin")
    assert "- Manual." in (alice.path / "SKILL.md").read_text()
    # t2s opens a plain clone and installs the merge config it needs.
    SkillsRepo.open(carol)
    assert "t2s.mergedriver" in git(carol, "config", "merge.t2s-skill.driver")


def test_plain_git_merge_runs_the_t2s_merge_driver(shared, tmp_path):
    alice, bare, _patch, _result = shared
    bob = SkillsRepo.clone(str(bare), tmp_path / "bob")
    evolve(alice, "run2", "- Check totals.")
    alice.push("origin")
    evolve(bob, "run3", "- Recheck the answer.")  # same anchor as Alice: a textual overlap
    git(bob.path, "fetch", "-q", "origin")
    merged = subprocess.run(["git", "-C", str(bob.path), "merge", "--no-edit", "origin/main"],
                            capture_output=True, text=True, check=False)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    text = (bob.path / "SKILL.md").read_text()
    assert "- Check totals." in text and "- Recheck the answer." in text
    assert "<<<<<<<" not in text


def test_cli_push_pull_clone(shared, tmp_path):
    alice, bare, _patch, _result = shared
    runner = CliRunner()
    cloned = runner.invoke(main, ["clone", str(bare), str(tmp_path / "dave")])
    assert cloned.exit_code == 0, cloned.output
    assert f"Cloned {bare} into {tmp_path / 'dave'}" in cloned.output
    assert "result branches: t2s/run1/result" in cloned.output
    evolve(alice, "run2", "- Check totals.")
    pushed = runner.invoke(main, ["push", "--repo", str(alice.path)])
    assert pushed.exit_code == 0 and "Pushed to origin" in pushed.output
    assert "t2s/run2/result" in pushed.output
    pulled = runner.invoke(main, ["pull", "origin", "--repo", str(tmp_path / "dave")])
    assert pulled.exit_code == 0 and "main: fast-forwarded" in pulled.output
    again = runner.invoke(main, ["clone", str(bare), str(tmp_path / "dave")])
    assert again.exit_code == 1 and "not empty" in again.output


def test_a_fresh_remote_without_notes_or_results(tmp_path):
    skill = tmp_path / "skill"
    skill.mkdir()
    (skill / "SKILL.md").write_text(SKILL_MD)
    repo = SkillsRepo.init(tmp_path / "fresh", from_dir=skill)
    bare = tmp_path / "fresh.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    assert repo.push(str(bare)).updates == ["main: [new branch]"]
    assert repo.pull(str(bare)).updates == ["main: up to date"]
    copy = SkillsRepo.clone(str(bare), tmp_path / "copy")
    assert copy.resolve("main") == repo.resolve("main")
    assert copy.branches("t2s/") == {} and copy.read_note("main") is None


def test_empty_or_missing_remotes_are_clear_errors(shared, tmp_path):
    alice, *_ = shared
    empty = tmp_path / "empty.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(empty))
    with pytest.raises(RepoError, match="has no main branch: it is not a t2s skills repository"):
        alice.pull(str(empty))
    with pytest.raises(RepoError, match="cannot clone .*Remote branch main not found"):
        SkillsRepo.clone(str(empty), tmp_path / "copy")
    with pytest.raises(RepoError, match="cannot fetch from .*does not appear to be a git repo"):
        alice.pull(str(tmp_path / "nowhere"))
    assert not (tmp_path / "copy").exists()


def test_pull_refuses_mains_the_rules_cannot_merge(shared, tmp_path):
    alice, bare, _patch, _result = shared
    bob = SkillsRepo.clone(str(bare), tmp_path / "bob")
    for repo, value in ((alice, "1"), (bob, "2")):
        patched = repo.read_skill().with_file("scripts/check.py", f"LIMIT = {value}\n")
        repo.move_branch("main", repo.create_patch_branch(
            "s", 1, repo.resolve("main"), patched, PatchCommit(lesson=f"limit {value}")))
    alice.push("origin")
    before = bob.resolve("main")
    with pytest.raises(RepoError, match=r"scripts/check.py .*run `git merge origin/main`"):
        bob.pull("origin")
    assert bob.resolve("main") == before
    assert git(bob.path, "status", "--porcelain") == ""
