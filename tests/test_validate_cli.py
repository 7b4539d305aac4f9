from pathlib import Path

import pytest
from click.testing import CliRunner

from t2s.cli import main
from t2s.skill import Skill

STARTER = Path(__file__).resolve().parent.parent / "t2s" / "starter_skill"


def broken_skill(path):
    Skill({
        "SKILL.md": "---\nname: Bad Name\ndescription: d\n---\n# T\n\nSee [x](references/x.md).\n"
                    "<<<<<<< ours\n",
    }).to_dir(path)


def test_valid_directory(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(STARTER), "--repo", str(tmp_path / "none")])
    assert result.exit_code == 0, result.output
    assert result.output == "ok: spreadsheet-openpyxl (2 files)\n"


def test_invalid_directory_prints_file_line_message(tmp_path):
    broken_skill(tmp_path / "bad")
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "bad")])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        ("SKILL.md:2: name 'Bad Name' is not kebab-case (lowercase letters, digits and single "
         "hyphens)"),
        "SKILL.md:7: link to 'references/x.md' does not resolve to a file of the skill",
        "SKILL.md:8: merge-conflict marker '<<<<<<<'",
    ]
    assert "3 violation(s)" in result.stderr


def test_default_is_the_current_directory_without_a_repo(tmp_path, monkeypatch):
    broken_skill(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["validate"])
    assert result.exit_code == 1 and "SKILL.md:2: name" in result.output


def test_not_a_skill_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["validate", "empty"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: empty has no SKILL.md")
    missing = CliRunner().invoke(main, ["validate", "nowhere"])
    assert missing.exit_code == 1 and "not a skill directory" in missing.output
    assert "Traceback" not in missing.output


def test_ref_in_the_skills_repository(tmp_path, monkeypatch):
    repo_module = pytest.importorskip("t2s.repo")
    repo_module.SkillsRepo.init(tmp_path / "skills_repo")
    monkeypatch.chdir(tmp_path)
    for args in (["validate"], ["validate", "main"],
                 ["validate", "main", "--repo", str(tmp_path / "skills_repo")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert result.output.startswith("ok: spreadsheet-openpyxl")
    unknown = CliRunner().invoke(main, ["validate", "no-such-branch"])
    assert unknown.exit_code == 1 and unknown.output.startswith("Error: ")
