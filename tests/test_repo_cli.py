"""`t2s init`, `log`, `blame`, `show`, `diff` through click's CliRunner."""

import subprocess
import time

import pytest
from click.testing import CliRunner

from t2s.cli import main
from t2s.repo import PatchCommit, SkillsRepo

SKILL_MD = """\
---
name: cli-skill
description: A skill for command tests.
---
# CLI skill

## Steps
- Load the workbook.
- Write the answer.
"""


@pytest.fixture
def skill_dir(tmp_path):
    path = tmp_path / "skill"
    path.mkdir()
    (path / "SKILL.md").write_text(SKILL_MD)
    return path


@pytest.fixture
def repo_with_history(tmp_path, skill_dir):
    """main <- merge of two patch branches (run r1), on result branch t2s/r1/result."""
    repo = SkillsRepo.init(tmp_path / "repo", from_dir=skill_dir)
    base = repo.resolve("main")
    skill = repo.read_skill()
    text = skill.files["SKILL.md"]
    one = skill.with_file("SKILL.md", text.replace("- Write the answer.\n",
                                                   "- Write the answer.\n- Save as .xlsx.\n"))
    two = skill.with_file("SKILL.md", text.replace("- Load the workbook.\n",
                                                   "- Load the workbook.\n- Check headers.\n"))
    shas = [
        repo.create_patch_branch("r1", n, base, patched, PatchCommit(
            lesson=lesson, reasoning=f"Because of trajectory {n}.", run="r1", task=f"task-{n}",
            trajectory=f"traj-{n}", outcome="failure", analyst="error", model="smollm2",
            note=f"digest of traj-{n}"))
        for n, patched, lesson in [(1, one, "Save the output as xlsx"),
                                   (2, two, "Check the headers first")]
    ]
    merged = repo.merge_tree(*shas)
    assert merged.clean
    merge = repo.commit_tree(merged.tree, shas, (
        "Merge 2 patches of run r1\n\nKept lessons:\n- Save the output as xlsx\n"
        "- Check the headers first\n\nT2S-Run: r1\nT2S-Level: 1\nT2S-Support: 2\n"))
    repo.update_refs({"t2s/r1/result": merge})
    return repo, base, shas, merge


def run(*args):
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_init_prints_what_it_created_then_is_a_no_op(tmp_path, skill_dir):
    target = tmp_path / "repo"
    result = run("init", target, "--from", skill_dir)
    assert result.exit_code == 0
    assert f"Created skills repository {target}" in result.output
    assert "skill cli-skill: SKILL.md" in result.output
    assert "merge=t2s-skill" in result.output
    again = run("init", target)
    assert again.exit_code == 0 and "already a t2s skills repository" in again.output
    assert "nothing changed" in again.output


def test_init_default_path_and_starter_skill(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("init")
    assert result.exit_code == 0
    assert (tmp_path / "skills_repo" / "SKILL.md").is_file()
    assert "spreadsheet" in result.output


def test_init_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    result = run("init", tmp_path / "busy")
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "not empty" in result.output
    assert "Traceback" not in result.output


def test_init_refuses_an_invalid_skill(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "SKILL.md").write_text("no front matter\n")
    result = run("init", tmp_path / "repo", "--from", bad)
    assert result.exit_code == 1 and "is not a valid skill" in result.output
    assert not (tmp_path / "repo").exists()


def test_init_from_a_path_that_is_not_a_skill(tmp_path):
    result = run("init", tmp_path / "repo", "--from", tmp_path / "missing")
    assert result.exit_code == 1 and "is not a directory" in result.output
    (tmp_path / "plain").mkdir()
    result = run("init", tmp_path / "repo", "--from", tmp_path / "plain")
    assert result.exit_code == 1 and "has no SKILL.md" in result.output
    assert not (tmp_path / "repo").exists()


def test_commits_need_an_identity(tmp_path, skill_dir, monkeypatch):
    for variable in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                     "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(variable)
    monkeypatch.setenv("GIT_AUTHOR_DATE", "not a date")
    result = run("init", tmp_path / "repo", "--from", skill_dir)
    assert result.exit_code == 1 and "cannot name the commit author" in result.output
    assert not (tmp_path / "repo").exists()


def test_log_shows_merges_lessons_support_and_patches(repo_with_history):
    repo, base, shas, merge = repo_with_history
    result = run("log", "--repo", repo.path)
    assert result.exit_code == 0
    blocks = result.output.strip().split("\n\n")
    assert blocks[0].startswith(f"merge of 2 {merge[:10]}  (t2s/r1/result)")
    assert "run r1 · level 1 · support 2" in blocks[0]
    assert "- Save the output as xlsx" in blocks[0]
    patch = next(block for block in blocks if shas[0][:10] in block)
    assert patch.startswith("patch ")
    assert "Save the output as xlsx" in patch
    assert ("run r1 · task task-1 · trajectory traj-1 · outcome failure · analyst error · "
            "model smollm2") in patch
    assert "note: digest of traj-1" in patch
    assert blocks[-1].startswith(f"init {base[:10]}  (main)")
    first_parent = run("log", "--first-parent", "t2s/r1/result", "--repo", repo.path)
    assert shas[0][:10] in first_parent.output and shas[1][:10] not in first_parent.output
    assert len(run("log", "-n", "1", "--repo", repo.path).output.strip().split("\n\n")) == 1


def test_blame_leads_each_line_to_its_trajectory(repo_with_history):
    repo, base, shas, merge = repo_with_history
    result = run("blame", "--ref", "t2s/r1/result", "--repo", repo.path)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    save = next(line for line in lines if line.endswith("| - Save as .xlsx."))
    assert save.startswith(shas[0][:8]) and "task task-1 (traj-1)" in save
    headers = next(line for line in lines if line.endswith("| - Check headers."))
    assert "task task-2 (traj-2)" in headers
    loaded = next(line for line in lines if line.endswith("| - Load the workbook."))
    assert loaded.startswith(base[:8]) and "initial skill" in loaded
    assert len(lines) == len(repo.read_file(merge, "SKILL.md").splitlines())


def test_blame_names_every_trajectory_that_taught_a_line(tmp_path, skill_dir):
    repo = SkillsRepo.init(tmp_path / "repo", from_dir=skill_dir)
    base = repo.resolve("main")
    skill = repo.read_skill()
    same = skill.with_file("SKILL.md", skill.files["SKILL.md"] + "- Recheck totals.\n")
    shas = [repo.create_patch_branch("r2", n, base, same, PatchCommit(
                lesson="Recheck totals", run="r2", task=f"task-{n}", trajectory=f"traj-{n}"))
            for n in (1, 2)]
    merge = repo.commit_tree(repo.tree_of(shas[0]), shas, "Merge 2 patches\n")
    repo.update_refs({"t2s/r2/result": merge})
    result = run("blame", "--ref", "t2s/r2/result", "--repo", repo.path)
    assert result.exit_code == 0
    last = result.output.splitlines()[-1]
    assert last.endswith("| - Recheck totals.")
    assert "tasks task-1, task-2 (2 patches)" in last


def test_show_a_patch_by_shorthand_with_trailers_note_and_diff(repo_with_history):
    repo, _base, shas, _merge = repo_with_history
    result = run("show", "r1/1", "--repo", repo.path)
    assert result.exit_code == 0
    assert f"commit {shas[0]}  (t2s/r1/patch/1)" in result.output
    assert "    Save the output as xlsx" in result.output
    assert "    T2S-Trajectory: traj-1" in result.output
    assert "Note (refs/notes/t2s):\n    digest of traj-1" in result.output
    assert "+- Save as .xlsx." in result.output
    merge_view = run("show", "t2s/r1/result", "--repo", repo.path)
    assert f"Merge: {shas[0][:10]} {shas[1][:10]}" in merge_view.output


def test_diff_between_two_refs(repo_with_history):
    repo, _base, _shas, _merge = repo_with_history
    result = run("diff", "main", "t2s/r1/result", "--repo", repo.path)
    assert result.exit_code == 0
    assert "+- Save as .xlsx." in result.output and "+- Check headers." in result.output
    stat = run("diff", "main", "t2s/r1/result", "--stat", "--repo", repo.path)
    assert "SKILL.md | 2 ++" in stat.output
    shorthand = run("diff", "main", "r1/2", "--repo", repo.path)
    assert "+- Check headers." in shorthand.output and "Save as" not in shorthand.output


def test_bad_input_is_one_error_line(repo_with_history, tmp_path):
    repo, *_ = repo_with_history
    for args, expected in [
        (("show", "r9/9", "--repo", repo.path), "unknown ref 'r9/9'"),
        (("diff", "main", "nope", "--repo", repo.path), "unknown ref 'nope'"),
        (("log", "nope", "--repo", repo.path), "unknown ref 'nope'"),
        (("blame", "references/x.md", "--repo", repo.path), "has no file references/x.md"),
        (("log", "--repo", tmp_path / "none"), "no skills repository at"),
        (("push", "nowhere", "--repo", repo.path), "cannot push to nowhere"),
        (("clone", tmp_path / "none", tmp_path / "c"), "cannot clone"),
    ]:
        result = run(*args)
        assert result.exit_code == 1, args
        assert result.output.startswith("Error: ") and expected in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_a_busy_repository_is_reported(repo_with_history, monkeypatch, tmp_path):
    repo, *_ = repo_with_history
    bare = tmp_path / "shared.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    holder = subprocess.Popen(
        ["flock", str(repo.git_dir / "t2s-lock"), "sleep", "3"])
    try:
        for _ in range(100):
            if subprocess.run(["flock", "-n", str(repo.git_dir / "t2s-lock"), "true"],
                              check=False).returncode:
                break
            time.sleep(0.02)
        monkeypatch.setenv("T2S_LOCK_TIMEOUT", "0.2")
        result = run("push", bare, "--repo", repo.path)
        assert result.exit_code == 1 and "is busy (locked by" in result.output
    finally:
        holder.kill()
        holder.wait()
