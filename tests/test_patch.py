import json
import random
import re
from pathlib import Path

import jsonschema
import pytest

from t2s.errors import PatchError
from t2s.patch import (
    GRAMMAR_MAX_LENGTH,
    MAX_EDITS,
    OPS,
    PATCH_SCHEMA,
    Edit,
    Patch,
    apply_patch,
    patch_schema,
)
from t2s.skill import Skill, validate_skill

STARTER = Path(__file__).resolve().parent.parent / "t2s" / "starter_skill"

SKILL_MD = """---
name: demo-skill
description: Does demo things.
---
# Demo

Intro.

## Workflow

- Read the sheet.
- Write the answer.

### Details

Detail text.

## Checks

Check the output.
"""


def demo(**extra):
    files = {"SKILL.md": SKILL_MD}
    files.update(extra)
    return Skill(files)


def apply(skill, *edits):
    result = apply_patch(skill, Patch("why", ["a lesson"], [Edit(**edit) for edit in edits]))
    assert validate_skill(result.skill, base=skill) == [] or validate_skill(skill)
    return result


def lines(result, file="SKILL.md"):
    return result.skill.files[file].splitlines()


# -- the schema and from_dict ---------------------------------------------------------------


def test_schema_is_flat_bounded_and_published():
    assert patch_schema() == PATCH_SCHEMA and patch_schema() is not PATCH_SCHEMA
    edit = PATCH_SCHEMA["properties"]["edits"]["items"]
    assert set(edit["required"]) == {"op", "file", "section", "anchor", "target", "content"}
    assert edit["properties"]["op"]["enum"] == list(OPS) and len(OPS) == 8
    assert PATCH_SCHEMA["properties"]["lessons"]["maxItems"] == 3
    assert all({"maxLength", "pattern", "enum"} & set(spec) for spec in edit["properties"].values())
    lengths = [spec["maxLength"] for spec in edit["properties"].values() if "maxLength" in spec]
    assert max(lengths) <= GRAMMAR_MAX_LENGTH  # longer strings crash llama.cpp's grammar
    full = {"reasoning": "r", "lessons": ["l"], "edits": [
        {"op": "delete_section", "file": "SKILL.md", "section": "Checks", "anchor": "",
         "target": "", "content": ""}]}
    jsonschema.validate(full, PATCH_SCHEMA)
    assert Patch.from_dict(full).to_dict() == full


def test_from_dict_fills_unused_fields_and_defaults_file():
    patch = Patch.from_dict({"reasoning": " r ", "lessons": [], "edits": [
        {"op": "append_to_section", "section": "Checks", "content": "x"}]})
    assert patch.edits == [Edit("append_to_section", "SKILL.md", "Checks", "", "", "x")]
    assert patch.reasoning == "r"


@pytest.mark.parametrize("data, message", [
    ([], "must be a JSON object"),
    ({"lessons": [], "edits": []}, "'reasoning' is a required property"),
    ({"reasoning": "r", "lessons": ["a", "b", "c", "d"], "edits": []},
     "at lessons: 4 items, more than 3"),
    ({"reasoning": "r" * 601, "lessons": [], "edits": []},
     "at reasoning: 601 characters, more than 600"),
    ({"reasoning": "r", "lessons": [], "edits": [{"op": "rewrite_all"}]},
     "at edits/0/op: 'rewrite_all' is not one of insert_after, insert_before,"),
    ({"reasoning": "r", "lessons": [], "edits": [{"op": "add_section", "bogus": 1}]},
     "Additional properties"),
    ({"reasoning": "r", "lessons": [], "edits": [{"op": "insert_after", "content": "x"}]},
     "edit 1 (insert_after) needs a non-empty 'anchor'"),
    ({"reasoning": "r", "lessons": [], "edits": [{"op": "create_file", "content": "x"}]},
     "needs a non-empty 'file'"),
    ({"reasoning": "r", "lessons": [], "edits": [{"op": "delete_file", "file": 3}]},
     "at edits/0/file"),
])
def test_from_dict_malformed(data, message):
    with pytest.raises(PatchError, match=re.escape(message)) as raised:
        Patch.from_dict(data)
    assert "\n" not in str(raised.value)


def test_strict_limits_and_relaxed_reading():
    edit = {"op": "delete_section", "section": "Checks"}
    data = {"reasoning": "r" * 700, "lessons": [], "edits": [edit] * (MAX_EDITS + 1)}
    with pytest.raises(PatchError):
        Patch.from_dict(data)
    assert len(Patch.from_dict(data, strict=False).edits) == MAX_EDITS + 1


def test_from_json():
    with pytest.raises(PatchError, match="not valid JSON"):
        Patch.from_json("{nope")
    text = json.dumps({"reasoning": "r", "lessons": [], "edits": []})
    assert Patch.from_json(text) == Patch("r", [], [])


# -- each operation -----------------------------------------------------------------------


def test_insert_after_and_before_exact():
    result = apply(demo(),
                   {"op": "insert_after", "anchor": "- Read the sheet.",
                    "content": "- Find headers."},
                   {"op": "insert_before", "anchor": "## Checks", "content": "Note.\n"})
    body = lines(result)
    assert body[body.index("- Read the sheet.") + 1] == "- Find headers."
    assert body[body.index("## Checks") - 1] == "Note."
    assert len(result.applied) == 2 and not result.refused and not result.notes
    assert not result.rejected


def test_multi_line_anchor():
    result = apply(demo(), {"op": "insert_after",
                            "anchor": "- Read the sheet.\n- Write the answer.",
                            "content": "- Save."})
    assert lines(result)[12] == "- Save."


def test_append_to_section_goes_before_subsections():
    result = apply(demo(), {"op": "append_to_section", "section": "Workflow",
                            "content": "- Check the answer."})
    body = lines(result)
    assert body[body.index("- Write the answer.") + 1] == "- Check the answer."
    assert body.index("- Check the answer.") < body.index("### Details")
    result = apply(demo(), {"op": "append_to_section", "section": "## Checks", "content": "More."})
    assert lines(result)[-2:] == ["Check the output.", "More."]


def test_replace_in_section():
    result = apply(demo(), {"op": "replace_in_section", "section": "Checks",
                            "target": "the output", "content": "every answer cell"})
    assert "Check every answer cell." in lines(result)
    deleted = apply(demo(), {"op": "replace_in_section", "section": "Workflow",
                             "target": "- Read the sheet.", "content": ""})
    assert "- Read the sheet." not in lines(deleted)
    assert lines(deleted)[10] == "- Write the answer."  # the whole line went, not just its text


def test_replace_only_inside_the_named_section():
    result = apply(demo(), {"op": "replace_in_section", "section": "Checks",
                            "target": "Read the sheet", "content": "x"})
    assert result.rejected and result.refused[0].reason == (
        "target not found in section 'Checks' of SKILL.md"
    )


def test_add_section():
    result = apply(demo(), {"op": "add_section", "section": "Dates",
                            "content": "## Dates\n\nUse datetime objects."})
    assert lines(result)[-5:] == ["Check the output.", "", "## Dates", "", "Use datetime objects."]
    nested = apply(demo(), {"op": "add_section", "section": "### Deep", "content": "x"})
    assert "### Deep" in lines(nested)
    exists = apply(demo(), {"op": "add_section", "section": "checks", "content": "x"})
    assert "already exists" in exists.refused[0].reason


def test_delete_section_takes_subsections():
    result = apply(demo(), {"op": "delete_section", "section": "Workflow"})
    text = result.skill.files["SKILL.md"]
    assert "Workflow" not in text and "Details" not in text and "## Checks" in text
    assert "\n\n\n" not in text
    top = apply(demo(), {"op": "delete_section", "section": "Demo"})
    assert top.rejected and "top-level section" in top.refused[0].reason


def test_create_and_delete_file_with_links():
    link = {"op": "append_to_section", "section": "Checks",
            "content": "See [dates](references/dates.md)."}
    create = {"op": "create_file", "file": "references/dates.md", "content": "# Dates\n\nx"}
    result = apply(demo(), link, create)
    assert result.skill.files["references/dates.md"] == "# Dates\n\nx\n"
    assert len(result.applied) == 2
    unlink = {"op": "replace_in_section", "section": "Checks",
              "target": "See [dates](references/dates.md).", "content": ""}
    gone = apply(result.skill, unlink, {"op": "delete_file", "file": "references/dates.md"})
    assert "references/dates.md" not in gone.skill.files and len(gone.applied) == 2


def test_delete_file_still_linked_is_refused():
    skill = apply(demo(), {"op": "append_to_section", "section": "Checks",
                           "content": "[d](references/d.md)"},
                  {"op": "create_file", "file": "references/d.md", "content": "d"}).skill
    result = apply(skill, {"op": "delete_file", "file": "references/d.md"})
    assert result.rejected and result.refused[0].reason == (
        "deletes references/d.md, which SKILL.md still links to"
    )
    assert result.skill == skill


# -- matching -------------------------------------------------------------------------------


def test_fuzzy_whitespace_and_case_match_is_reported():
    result = apply(demo(), {"op": "insert_after", "anchor": "-  read the SHEET.", "content": "- x"})
    assert len(result.applied) == 1
    assert result.notes == [
        "edit 1 (insert_after): anchor matched fuzzily (whitespace/case) at line 11 of SKILL.md"
    ]


def test_fuzzy_similarity_match_is_reported():
    result = apply(demo(), {"op": "insert_after", "anchor": "- Read the sheets", "content": "- x"})
    assert lines(result)[11] == "- x"
    assert "similarity" in result.notes[0] and "'- Read the sheet.'" in result.notes[0]
    section = apply(demo(), {"op": "append_to_section", "section": "Workfow", "content": "y"})
    assert "matched fuzzily" in section.notes[0] and "'Workflow'" in section.notes[0]
    target = apply(demo(), {"op": "replace_in_section", "section": "checks",
                            "target": "check the  output", "content": "Verify"})
    assert "Verify." in lines(target) and len(target.notes) == 2


@pytest.mark.parametrize("edit, reason", [
    ({"op": "insert_after", "anchor": "Something else entirely", "content": "x"},
     "anchor not found in SKILL.md"),
    ({"op": "append_to_section", "section": "Formulas", "content": "x"},
     "section 'Formulas' not found in SKILL.md"),
    ({"op": "insert_after", "file": "references/x.md", "anchor": "a", "content": "x"},
     "file references/x.md does not exist"),
    ({"op": "insert_after", "anchor": "", "content": "x"}, "'anchor' is empty"),
    ({"op": "replace_in_section", "section": "Checks", "target": "", "content": "x"},
     "'target' is empty"),
    ({"op": "create_file", "file": "references/x.md", "content": "  "}, "'content' is empty"),
    ({"op": "delete_file", "file": "SKILL.md"}, "SKILL.md cannot be deleted"),
])
def test_not_found_is_refused(edit, reason):
    result = apply(demo(), edit)
    assert result.rejected and result.refused[0].reason == reason
    assert result.refused[0].index == 0 and result.skill == demo()


def test_ambiguous_anchor_is_refused():
    skill = demo().with_file("SKILL.md", SKILL_MD + "\n- Read the sheet.\n")
    result = apply(skill, {"op": "insert_after", "anchor": "- Read the sheet.", "content": "x"})
    assert result.refused[0].reason == "anchor matches 2 places in SKILL.md; quote a unique anchor"


@pytest.mark.parametrize("path", ["../evil.md", "/etc/passwd.md", "references/../SKILL.md",
                                  "references/sub/x.md", "scripts/run.py", "notes.txt"])
def test_paths_outside_skill_md_and_references_are_refused(path):
    result = apply(demo(), {"op": "create_file", "file": path, "content": "x"})
    assert result.rejected and "is not allowed" in result.refused[0].reason


def test_protected_files_are_refused():
    skill = demo(**{"references/locked.md": "# Locked\n\nx\n"}).with_file(
        "SKILL.md", SKILL_MD.replace("---\n#", "protected: [references/locked.md]\n---\n#")
        .replace("Intro.", "Intro [l](references/locked.md).")
    )
    assert validate_skill(skill) == []
    result = apply(skill, {"op": "insert_after", "file": "references/locked.md",
                           "anchor": "x", "content": "y"})
    assert result.refused[0].reason == "file references/locked.md is protected"


# -- pairing and validity ---------------------------------------------------------------------


def test_created_reference_without_link_is_dropped():
    result = apply(demo(), {"op": "create_file", "file": "references/lonely.md", "content": "x"},
                   {"op": "append_to_section", "section": "Checks", "content": "Done."})
    assert "references/lonely.md" not in result.skill.files
    assert [r.reason for r in result.refused] == [
        "references/lonely.md was created without a link to it from SKILL.md"
    ]
    assert [e.op for e in result.applied] == ["append_to_section"]


def test_link_without_its_file_is_dropped():
    result = apply(demo(), {"op": "append_to_section", "section": "Checks",
                            "content": "See [x](references/x.md)."},
                   {"op": "insert_after", "anchor": "Intro.", "content": "Hello."})
    assert "references/x.md" not in result.skill.files["SKILL.md"]
    assert [(r.index, r.reason) for r in result.refused] == [
        (0, "adds a link to references/x.md, which does not exist")
    ]
    assert "Hello." in lines(result)


def test_dropping_a_link_unpairs_the_file_it_named():
    # The link's edit is refused (its anchor does not exist), so the new file loses its link.
    result = apply(demo(), {"op": "insert_after", "anchor": "Nowhere",
                            "content": "[n](references/n.md)"},
                   {"op": "create_file", "file": "references/n.md", "content": "n"})
    assert result.rejected and len(result.refused) == 2


def test_invalid_result_refuses_the_offending_edit_and_stays_valid():
    result = apply(demo(),
                   {"op": "insert_after", "anchor": "Intro.", "content": "Good line."},
                   {"op": "append_to_section", "section": "Checks", "content": "x\n" * 490},
                   {"op": "insert_after", "anchor": "Intro.", "content": "<<<<<<< HEAD"},
                   {"op": "replace_in_section", "section": "Demo", "target": "Intro.",
                    "content": "Intro [dangling](#x) and [bad](references/none.md)."})
    assert [e.content for e in result.applied] == ["Good line."]
    reasons = [r.reason for r in result.refused]
    assert "SKILL.md has 511 lines" in reasons[0]
    assert "merge-conflict marker" in reasons[1]
    assert reasons[2] == "adds a link to references/none.md, which does not exist"
    assert validate_skill(result.skill, base=demo()) == []


def test_name_change_is_refused():
    result = apply(demo(), {"op": "replace_in_section", "section": "Demo", "target": "Intro.",
                            "content": "Intro!"},
                   {"op": "insert_after", "anchor": "name: demo-skill", "content": "name: other"})
    assert len(result.applied) == 1
    assert result.refused[0].reason == "it would change the skill's name from 'demo-skill'"
    assert result.skill.name == "demo-skill"


def test_front_matter_breakage_is_refused():
    result = apply(demo(), {"op": "insert_after", "anchor": "description: Does demo things.",
                            "content": "bad: [unclosed"})
    assert result.rejected and "front matter is not valid YAML" in result.refused[0].reason


def test_final_validation_drops_edits_from_the_end():
    # The new file becomes protected by the patch's own front matter edit, which only the
    # whole-skill check sees: the last edit goes, then its link loses its file.
    result = apply(demo(), {"op": "insert_after", "anchor": "description: Does demo things.",
                            "content": "protected: [references/new.md]"},
                   {"op": "append_to_section", "section": "Checks",
                    "content": "[n](references/new.md)"},
                   {"op": "create_file", "file": "references/new.md", "content": "new"})
    assert [e.op for e in result.applied] == ["insert_after"]
    assert [(r.index, r.reason) for r in result.refused] == [
        (1, "adds a link to references/new.md, which does not exist"),
        (2, ("the patched skill would fail validation: references/new.md:1: protected file "
             "references/new.md was added")),
    ]


def test_protection_is_judged_against_base():
    base = demo(**{"references/ok.md": "ok\n"}).with_file(
        "SKILL.md", SKILL_MD.replace("---\n#", "protected: [references/ok.md]\n---\n#")
        .replace("Intro.", "Intro [ok](references/ok.md)."))
    skill = base.with_file("SKILL.md", base.files["SKILL.md"].replace(
        "protected: [references/ok.md]\n", ""))
    result = apply_patch(skill, Patch("r", [], [
        Edit("insert_after", "references/ok.md", anchor="ok", content="more")]), base=base)
    assert result.rejected and result.refused[0].reason == "file references/ok.md is protected"


def test_rejected_patches():
    empty = apply_patch(demo(), Patch("r", [], []))
    assert empty.rejected and empty.rejection == "the patch has no edits"
    noop = apply(demo(), {"op": "replace_in_section", "section": "Checks",
                          "target": "output", "content": "output"})
    assert noop.rejected and noop.rejection == "the applied edits change nothing"
    refused = apply(demo(), {"op": "delete_section", "section": "Nope"})
    assert refused.rejection == (
        "all 1 edits were refused; first: section 'Nope' not found in SKILL.md"
    )
    assert refused.to_dict()["rejected"] is True
    assert refused.to_dict()["refused"][0]["edit"]["section"] == "Nope"


def test_bad_model_content_never_raises():
    nasty = [Edit("bogus_op"), Edit("insert_after", None), Edit("add_section", section="###"),
             Edit("replace_in_section", section="Checks", target="\n\n"),
             Edit("create_file", "references/x.md", content="[loop](x.md)")]
    result = apply_patch(demo(), Patch("", [], nasty))
    assert result.rejected and len(result.refused) == len(nasty)
    assert result.skill == demo()


def test_anchor_naming_a_heading_title_is_a_reported_fuzzy_match():
    result = apply(demo(), {"op": "insert_after", "anchor": "Checks", "content": "First check."})
    body = lines(result)
    assert body[body.index("## Checks") + 1] == "First check."
    assert result.notes == [
        "edit 1 (insert_after): anchor matched the heading at line 18 of SKILL.md"
    ]


def test_windows_line_endings_in_the_skill_match_exactly():
    skill = demo().with_file("SKILL.md", SKILL_MD.replace("\n", "\r\n"))
    result = apply(skill, {"op": "insert_after", "anchor": "- Read the sheet.", "content": "- x"})
    assert len(result.applied) == 1 and result.notes == []


def test_ambiguous_section_is_refused():
    skill = demo().with_file("SKILL.md", SKILL_MD + "\n## Checks\n\nAgain.\n")
    result = apply(skill, {"op": "append_to_section", "section": "Checks", "content": "x"})
    assert result.refused[0].reason == "section 'Checks' appears 2 times in SKILL.md"


def test_edit_fields_must_be_strings():
    assert Edit("delete_file", None).file == ""
    with pytest.raises(PatchError, match="'content' must be a string"):
        Edit("create_file", "references/x.md", content=3)


def test_partial_anchor_names_the_one_line_containing_it():
    skill = demo().with_file("SKILL.md", SKILL_MD.replace(
        "- Write the answer.", "- Write the answer into the answer cells, one value per cell."))
    result = apply(skill, {"op": "insert_after", "anchor": "Write the answer into",
                           "content": "- z"})
    assert lines(result)[12] == "- z"
    note = "anchor matched part of line 12 of SKILL.md; the edit uses the whole line"
    assert result.notes == [f"edit 1 (insert_after): {note}"]
    short = apply(skill, {"op": "insert_after", "anchor": "the answer", "content": "- z"})
    assert short.refused[0].reason == "anchor not found in SKILL.md"


@pytest.mark.model
def test_embedded_model_writes_a_patch_under_the_published_schema(embedded_model_path):
    """The schema compiles to a llama.cpp grammar, and whatever the model writes under it is
    either a Patch or a one-line PatchError; applying it never raises and stays valid."""
    from t2s.models import resolve_model
    from t2s.models.base import ChatOptions

    starter = Skill.from_dir(STARTER)
    schema = patch_schema()
    # Left free, this tiny model writes no edit, or six identical ones: ask for exactly one.
    schema["properties"]["edits"].update(minItems=1, maxItems=1)
    model = resolve_model(str(embedded_model_path), n_ctx=2048).load(threads=1)
    reply = model.chat(
        [{"role": "system", "content": "You improve a skill file. Reply with a JSON patch."},
         {"role": "user", "content": starter.files["SKILL.md"][:600]
          + "\n\nLesson: check the answer cells. Add one line to the section 'Checking your "
            "work'."}],
        ChatOptions(schema=schema, max_tokens=200),
    )
    data = reply.json()
    jsonschema.validate(data, PATCH_SCHEMA)
    try:
        patch = Patch.from_dict(data)
    except PatchError as error:
        assert "\n" not in str(error)
        return
    result = apply_patch(starter, patch)
    assert validate_skill(result.skill, base=starter) == []
    assert len(result.applied) + len(result.refused) == len(patch.edits)


def test_file_pattern_in_the_grammar_but_bad_paths_refused_per_edit():
    file_spec = PATCH_SCHEMA["properties"]["edits"]["items"]["properties"]["file"]
    pattern = re.compile(file_spec["pattern"])
    assert pattern.match("SKILL.md") and pattern.match("references/dates-2.md")
    assert not any(pattern.match(p) for p in ("../x.md", "references/../x.md", "Sheet1!A1", "x.md"))
    patch = Patch.from_dict({"reasoning": "r", "lessons": [], "edits": [
        {"op": "delete_file", "file": "../x.md"}, {"op": "delete_section", "section": "Checks"}]})
    result = apply_patch(demo(), patch)
    assert len(result.applied) == 1 and "is not allowed" in result.refused[0].reason


def test_random_patches_never_raise_and_always_leave_a_valid_skill():
    """Deterministic fuzzing: edits built from pieces of the skill and of hostile text."""
    rng = random.Random(0)
    starter = Skill.from_dir(STARTER)
    source_lines = starter.files["SKILL.md"].splitlines()
    titles = [s.title for s in starter.sections()] + ["Nope", "#", ""]
    pieces = source_lines + ["", "<<<<<<< x", "=======", "[l](references/new.md)", "---",
                             "name: other", "x\n" * 300, "## Workflow", "```", "../../etc"]
    files = ["SKILL.md", "references/openpyxl-cheatsheet.md", "references/new.md", "../x.md",
             "scripts/run.py", ""]
    applied = 0
    for _ in range(150):
        edits = [Edit(rng.choice(OPS), rng.choices(files, [8, 2, 3, 1, 1, 1])[0],
                      rng.choice(titles), rng.choice(pieces), rng.choice(pieces),
                      rng.choice(pieces))
                 for _ in range(rng.randint(0, 6))]
        result = apply_patch(starter, Patch("r", [], edits))
        assert validate_skill(result.skill, base=starter) == []
        assert len(result.applied) + len(result.refused) == len(edits)
        assert result.rejected == (not result.applied or result.skill == starter)
        applied += len(result.applied)
    assert applied > 50  # the fuzzing reaches the editing code, not only the refusals
