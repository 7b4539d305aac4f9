"""Plain `git merge` in a skills repository runs the t2s merge driver and yields a valid skill."""

import subprocess

from t2s.repo import SkillsRepo
from t2s.skill import Skill, validate_skill

SKILL = """---
name: shared-skill
description: A skill two colleagues evolve on their own branches.
---
# Shared skill

## Reading

- Open the workbook.

## Writing

- Save the output.
"""


def git(path, *args, check=True):
    return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                          check=check)


def commit_edit(path, old, new, message):
    skill_file = path / "SKILL.md"
    skill_file.write_text(skill_file.read_text().replace(old, new))
    git(path, "commit", "-q", "-am", message)


def test_plain_git_merge_of_diverged_skill_branches_is_conflict_free_and_valid(tmp_path):
    source = tmp_path / "skill"
    source.mkdir()
    (source / "SKILL.md").write_text(SKILL)
    repo = SkillsRepo.init(tmp_path / "repo", from_dir=source)
    work = repo.path
    assert "merge=t2s-skill" in (work / ".gitattributes").read_text()

    git(work, "checkout", "-q", "-b", "colleague")
    commit_edit(work, "- Open the workbook.\n", "- Open the workbook.\n- Find the header row.\n",
                "colleague: headers")
    commit_edit(work, "- Save the output.", "- Save a copy of the output.", "colleague: copies")
    git(work, "checkout", "-q", "main")
    commit_edit(work, "- Open the workbook.\n", "- Open the workbook.\n- Strip stray spaces.\n",
                "me: spaces")
    commit_edit(work, "- Save the output.", "- Save with openpyxl.", "me: openpyxl")
    # A plain 3-way text merge would stop on both places.
    merged = git(work, "merge", "--no-edit", "colleague", check=False)
    assert merged.returncode == 0, merged.stdout + merged.stderr

    text = (work / "SKILL.md").read_text()
    assert "<<<<<<<" not in text and ">>>>>>>" not in text
    # both insertions at the same anchor are kept, ours first; the tie on the replaced line
    # goes to ours
    assert "- Open the workbook.\n- Strip stray spaces.\n- Find the header row.\n" in text
    assert "- Save with openpyxl." in text and "- Save a copy" not in text
    assert validate_skill(Skill.from_dir(work)) == []
    assert git(work, "status", "--porcelain").stdout == ""
    parents = git(work, "log", "-1", "--format=%P").stdout.split()
    assert len(parents) == 2


def test_a_clone_gets_the_driver_again(tmp_path):
    source = tmp_path / "skill"
    source.mkdir()
    (source / "SKILL.md").write_text(SKILL)
    origin = SkillsRepo.init(tmp_path / "origin", from_dir=source)
    clone = SkillsRepo.clone(str(origin.path), tmp_path / "clone")
    driver = git(clone.path, "config", "merge.t2s-skill.driver").stdout
    assert "-m t2s.mergedriver %O %A %B %L %P" in driver
