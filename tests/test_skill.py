from pathlib import Path

import pytest

from t2s.errors import SkillError
from t2s.skill import Section, Skill, load_skill, validate_skill

STARTER = Path(__file__).resolve().parent.parent / "t2s" / "starter_skill"

FRONT = "---\nname: demo-skill\ndescription: Does demo things.\n---\n"
BODY = """# Demo

Intro with a [guide](references/guide.md).

## Workflow

1. Read.
2. Write.

```python
# not a heading
## nor this
```

### Details

More.

## Checks

- Check it.
"""


def make(skill_md=FRONT + BODY, **files):
    data = {"SKILL.md": skill_md, "references/guide.md": "# Guide\n\nText.\n"}
    data.update({path.replace("__", "/"): text for path, text in files.items()})
    return Skill(data)


def rules(violations):
    return [(v.file, v.rule) for v in violations]


def test_front_matter_and_body():
    skill = make()
    assert skill.name == "demo-skill"
    assert skill.description == "Does demo things."
    assert skill.body.startswith("# Demo\n")
    assert skill.front_matter == {"name": "demo-skill", "description": "Does demo things."}


def test_sections_skip_fenced_code_and_include_subsections():
    sections = make().sections()
    assert [(s.title, s.level) for s in sections] == [
        ("Demo", 1), ("Workflow", 2), ("Details", 3), ("Checks", 2)
    ]
    workflow = sections[1]
    assert workflow == Section("Workflow", 2, 9, 22)
    assert make().files["SKILL.md"].splitlines()[workflow.start_line - 1] == "## Workflow"
    text = make().section_text("Workflow")
    assert text.startswith("## Workflow\n") and "### Details" in text and "Checks" not in text
    assert sections[-1].end_line == len(make().files["SKILL.md"].splitlines())


def test_section_text_missing_raises():
    with pytest.raises(SkillError, match="section 'Nope' not found in SKILL.md"):
        make().section_text("Nope")


def test_tilde_fences_and_longer_closing_fence():
    skill = make(FRONT + "# T\n~~~\n## hidden\n~~~~\n## Shown\n````\n```\n## hidden too\n````\n")
    assert [s.title for s in skill.sections()] == ["T", "Shown"]


def test_links_and_references():
    skill = make(FRONT + BODY + "\n[site](https://example.com) [top](#demo) `[code](x.md)`\n"
                 "[ref]: references/guide.md#part\n")
    assert skill.references() == ["references/guide.md"]
    assert [(link.line, link.path) for link in skill.links()] == [
        (7, "references/guide.md"), (28, "references/guide.md")
    ]


def test_link_from_reference_resolves_relative_to_its_directory():
    skill = make(**{"references__a.md": "see [b](b.md) and [up](../SKILL.md)\n"})
    assert {link.path for link in skill.links("references/a.md")} == {
        "references/b.md", "SKILL.md"
    }
    assert rules(validate_skill(skill)) == [("references/a.md", "link")]


def test_from_dir_and_to_dir_round_trip(tmp_path):
    skill = make(**{"scripts__run.py": "print('hi')\n"})
    skill.to_dir(tmp_path / "s")
    assert Skill.from_dir(tmp_path / "s") == skill
    (tmp_path / "s" / ".git").mkdir()
    (tmp_path / "s" / ".git" / "keep").write_text("x")
    smaller = skill.without_file("scripts/run.py").without_file("references/guide.md")
    smaller.to_dir(tmp_path / "s")
    assert not (tmp_path / "s" / "scripts").exists()
    assert not (tmp_path / "s" / "references").exists()
    assert (tmp_path / "s" / ".git" / "keep").exists()
    assert Skill.from_dir(tmp_path / "s") == smaller


def test_from_dir_errors(tmp_path):
    with pytest.raises(SkillError, match="is not a directory"):
        Skill.from_dir(tmp_path / "missing")
    with pytest.raises(SkillError, match="has no SKILL.md"):
        Skill.from_dir(tmp_path)
    (tmp_path / "SKILL.md").write_text(FRONT)
    (tmp_path / "LICENSE.txt").write_text("x")
    with pytest.raises(SkillError, match="LICENSE.txt: only SKILL.md, references/ and scripts/"):
        Skill.from_dir(tmp_path)
    (tmp_path / "LICENSE.txt").unlink()
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "blob.bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SkillError, match="blob.bin is not UTF-8 text"):
        Skill.from_dir(tmp_path)


@pytest.mark.parametrize("path", ["../x.md", "/etc/passwd", "references/../../x", "notes.md",
                                  "references\\x.md", "references//x.md"])
def test_unsafe_paths_rejected(path):
    with pytest.raises(SkillError):
        Skill({"SKILL.md": FRONT, path: "x"})


def test_valid_skill_has_no_violations():
    assert validate_skill(make()) == []


def test_starter_skill_validates():
    skill = Skill.from_dir(STARTER)
    assert validate_skill(skill) == []
    assert skill.name == "spreadsheet-openpyxl"
    assert 40 <= len(skill.files["SKILL.md"].splitlines()) <= 80
    assert skill.references() and all(
        any(link.path == ref for link in skill.links("SKILL.md")) for ref in skill.references()
    )


@pytest.mark.parametrize("skill_md, expected", [
    ("# no front matter\n", "must start with YAML front matter"),
    ("---\nname: x\n", "not closed"),
    ("---\nname: [x\n---\n", "not valid YAML"),
    ("---\n- a\n---\n", "must be a YAML mapping"),
    ("---\ndescription: d\n---\n", "no 'name'"),
    ("---\nname: Bad_Name\ndescription: d\n---\n", "not kebab-case"),
    ("---\nname: a--b\ndescription: d\n---\n", "not kebab-case"),
    ("---\nname: " + "a" * 65 + "\ndescription: d\n---\n", "65 characters; the limit is 64"),
    ("---\nname: ok\n---\n", "no 'description'"),
    ("---\nname: ok\ndescription: ''\n---\n", "description must be non-empty"),
    ("---\nname: ok\ndescription: " + "d" * 1025 + "\n---\n", "1025 characters"),
])
def test_front_matter_rules(skill_md, expected):
    violations = validate_skill(Skill({"SKILL.md": skill_md}))
    assert len(violations) == 1 and expected in violations[0].message
    assert violations[0].file == "SKILL.md"


def test_name_limits_accept_the_boundary():
    skill = Skill({"SKILL.md": "---\nname: " + "a" * 64 + "\ndescription: " + "d" * 1024
                   + "\n---\n"})
    assert validate_skill(skill) == []


def test_violation_points_at_the_key_line():
    violations = validate_skill(Skill({"SKILL.md": "---\ndescription: d\nname: Bad\n---\n"}))
    assert str(violations[0]).startswith("SKILL.md:3: name 'Bad'")


def test_line_limits():
    assert validate_skill(make(FRONT + "x\n" * 495)) == []
    long = validate_skill(make(FRONT + "x\n" * 496))
    assert rules(long) == [("SKILL.md", "length")] and "500 lines" in long[0].message
    assert validate_skill(make(**{"references__guide.md": "y\n" * 299})) == []
    assert rules(validate_skill(make(**{"references__guide.md": "y\n" * 300}))) == [
        ("references/guide.md", "length")
    ]


def test_unresolved_link():
    skill = make(FRONT + BODY + "See [missing](references/missing.md).\n")
    violations = validate_skill(skill)
    assert rules(violations) == [("SKILL.md", "link")]
    assert violations[0].line == 26 and "references/missing.md" in violations[0].message


def test_conflict_markers_in_any_file():
    conflict = "<<<<<<< ours\na\n=======\nb\n>>>>>>> theirs\n"
    violations = validate_skill(make(**{"references__guide.md": "# G\n" + conflict}))
    assert [(v.file, v.line) for v in violations] == [
        ("references/guide.md", 2), ("references/guide.md", 4), ("references/guide.md", 6)
    ]
    assert all(v.rule == "conflict-marker" for v in violations)


def test_setext_underline_is_not_a_conflict_marker():
    assert validate_skill(make(FRONT + "Title\n=======\n")) == []


def test_protected_scripts_and_listed_files():
    base = make(FRONT.replace("---\n", "---\nprotected: [references/guide.md]\n", 1)
                + BODY, **{"scripts__run.py": "print(1)\n"})
    assert validate_skill(base, base=base) == []
    changed = base.with_file("scripts/run.py", "print(2)\n")
    added = base.with_file("scripts/new.sh", "echo\n")
    guide = base.with_file("references/guide.md", "# Other\n")
    assert [str(v) for v in validate_skill(changed, base=base)] == [
        "scripts/run.py:1: protected file scripts/run.py was changed"
    ]
    assert rules(validate_skill(added, base=base)) == [("scripts/new.sh", "protected")]
    assert rules(validate_skill(guide, base=base)) == [("references/guide.md", "protected")]
    assert rules(validate_skill(base.with_file("references/guide.md", "# Other\n"), base=base,
                                protected=["references/*.md"])) == [
        ("references/guide.md", "protected")
    ]


def test_name_change_against_base():
    base = make()
    renamed = make(FRONT.replace("demo-skill", "other-skill") + BODY)
    assert validate_skill(renamed) == []
    assert rules(validate_skill(renamed, base=base)) == [("SKILL.md", "name-changed")]


def test_load_skill_directory_and_errors(tmp_path, monkeypatch):
    make().to_dir(tmp_path / "s")
    skill, label = load_skill(str(tmp_path / "s"), tmp_path / "no_repo")
    assert skill.name == "demo-skill" and label == str(tmp_path / "s")
    monkeypatch.chdir(tmp_path / "s")
    assert load_skill(None, tmp_path / "no_repo")[0] == skill
    with pytest.raises(SkillError, match="not a skill directory, and there is no skills repo"):
        load_skill("main", tmp_path / "no_repo")


def test_parsing_is_shared_between_equal_texts():
    first, second = make(), make()
    assert first.sections() == second.sections()
    assert first.sections() is not first.sections()  # callers may modify what they get


def test_heading_closing_hashes_need_a_space():
    skill = make(FRONT + "# T\n## Use C#\n## Tips ##\n")
    assert [s.title for s in skill.sections()] == ["T", "Use C#", "Tips"]


def test_percent_encoded_link_resolves():
    skill = make(FRONT + "[g](references/my%20guide.md)\n", **{"references__my guide.md": "g\n"})
    assert validate_skill(skill) == []


def test_with_file_checks_the_new_path_only():
    skill = make()
    assert skill.with_file("references/new.md", "n").files["references/new.md"] == "n"
    assert "references/new.md" not in skill.files  # the original is unchanged
    with pytest.raises(SkillError):
        skill.with_file("../escape.md", "x")


def test_only_skill_md_has_front_matter():
    rule = "---\n# Guide\n\nText.\n\n---\n\n## Part\n"
    skill = make(**{"references__guide.md": rule})
    assert [s.title for s in skill.sections("references/guide.md")] == ["Guide", "Part"]
