"""The merge driver's rules, each on a hand-made three-way conflict."""

import json
import os
import subprocess
import sys

from t2s.mergedriver import (
    block_key,
    deletion_key,
    diff_hunks,
    merge_texts,
    normalize,
    split_blocks,
    write_support,
)

BASE = """# Spreadsheets

## Reading

- Open the workbook with openpyxl.
- Read the header row first.

## Writing

- Save to the output path.
"""


def with_reading(*lines: str) -> str:
    return BASE.replace("- Read the header row first.\n", "- Read the header row first.\n" + "".join(
        line + "\n" for line in lines))


def test_identical_edits_collapse():
    ours = with_reading("- Check merged cells.")
    outcome = merge_texts(BASE, ours, ours)
    assert outcome.text == ours
    assert outcome.conflicts == []


def test_edits_equal_up_to_whitespace_case_and_marker_collapse():
    ours = with_reading("- Check merged cells.")
    theirs = with_reading("*   check  merged cells.")
    assert merge_texts(BASE, ours, theirs).text == ours


def test_same_anchor_insertions_are_all_kept_ours_first_without_support():
    ours = with_reading("- Check merged cells.")
    theirs = with_reading("- Strip non-breaking spaces.")
    outcome = merge_texts(BASE, ours, theirs)
    assert outcome.text == with_reading("- Check merged cells.", "- Strip non-breaking spaces.")
    assert outcome.conflicts == []


def test_same_anchor_insertions_best_supported_first():
    ours = with_reading("- Check merged cells.")
    theirs = with_reading("- Strip non-breaking spaces.")
    support = {block_key("- Strip non-breaking spaces."): 4, block_key("- Check merged cells."): 2}
    outcome = merge_texts(BASE, ours, theirs, support=support, ties="conflict")
    assert outcome.text == with_reading("- Strip non-breaking spaces.", "- Check merged cells.")


def test_same_anchor_union_keeps_each_block_once():
    ours = with_reading("- A lesson.", "- Shared lesson.")
    theirs = with_reading("- Shared lesson.", "- B lesson.")
    support = {block_key("- Shared lesson."): 3}
    text = merge_texts(BASE, ours, theirs, support=support).text
    assert text == with_reading("- Shared lesson.", "- A lesson.", "- B lesson.")


def test_competing_replacements_go_to_the_better_supported_side():
    ours = BASE.replace("- Save to the output path.", "- Save with openpyxl.")
    theirs = BASE.replace("- Save to the output path.", "- Save a copy, never the input.")
    support = {block_key("- Save a copy, never the input."): 3, block_key("- Save with openpyxl."): 1}
    assert merge_texts(BASE, ours, theirs, support=support, ties="conflict").text == theirs
    support = {block_key("- Save a copy, never the input."): 1, block_key("- Save with openpyxl."): 2}
    assert merge_texts(BASE, ours, theirs, support=support, ties="conflict").text == ours


def test_tie_with_a_support_map_is_an_open_conflict():
    ours = BASE.replace("- Save to the output path.", "- Save with openpyxl.")
    theirs = BASE.replace("- Save to the output path.", "- Save a copy.")
    outcome = merge_texts(BASE, ours, theirs, support={}, ties="conflict", marker_size=7)
    assert outcome.open
    assert "<<<<<<< ours (support 1)\n- Save with openpyxl.\n=======\n- Save a copy.\n" in outcome.text
    assert ">>>>>>> theirs (support 1)\n" in outcome.text
    [conflict] = outcome.conflicts
    assert (conflict.base, conflict.resolution) == ("- Save to the output path.\n", "open")


def test_tie_without_a_map_goes_to_ours_and_is_reported():
    ours = BASE.replace("- Save to the output path.", "- Save with openpyxl.")
    theirs = BASE.replace("- Save to the output path.", "- Save a copy.")
    outcome = merge_texts(BASE, ours, theirs)
    assert outcome.text == ours
    assert not outcome.open
    assert [c.resolution for c in outcome.conflicts] == ["ours"]


def test_deletion_competes_with_a_replacement_by_support():
    ours = BASE.replace("- Save to the output path.\n", "")
    theirs = BASE.replace("- Save to the output path.", "- Save a copy.")
    support = {deletion_key("- Save to the output path.\n"): 2}
    assert merge_texts(BASE, ours, theirs, support=support, ties="conflict").text == ours


def test_edits_in_different_places_are_both_applied():
    ours = with_reading("- Check merged cells.")
    theirs = BASE.replace("- Save to the output path.", "- Save a copy.")
    text = merge_texts(BASE, ours, theirs, support={}, ties="conflict").text
    assert "- Check merged cells.\n" in text and "- Save a copy.\n" in text
    assert "- Save to the output path." not in text


def test_insertion_next_to_a_replacement_is_not_a_conflict():
    ours = BASE.replace("- Save to the output path.", "- Save a copy.")
    theirs = BASE.replace("## Writing\n\n", "## Writing\n\n- Never overwrite the input.\n")
    outcome = merge_texts(BASE, ours, theirs, support={}, ties="conflict")
    assert not outcome.conflicts
    assert "- Never overwrite the input.\n- Save a copy.\n" in outcome.text


def test_new_sections_at_the_end_stay_whole_and_ordered_by_support():
    ours = BASE + "\n## Dates\n\nConvert to serial days.\n- Use datetime.\n"
    theirs = BASE + "\n## Formulas\n\nEvaluate formulas before checking.\n"
    support = {block_key("\n## Formulas\n\nEvaluate formulas before checking.\n"): 2}
    text = merge_texts(BASE, ours, theirs, support=support).text
    assert text == BASE + (
        "\n## Formulas\n\nEvaluate formulas before checking.\n"
        "\n## Dates\n\nConvert to serial days.\n- Use datetime.\n"
    )


def test_split_blocks_keeps_continuations_and_sections_together():
    lines = "- one\n  more of one\n- two\n\nA paragraph\nstill it.\n## Head\n\n- in head\n".splitlines(
        keepends=True)
    blocks = ["".join(block) for block in split_blocks(lines)]
    assert blocks == ["- one\n  more of one\n", "- two\n\n", "A paragraph\nstill it.\n",
                      "## Head\n\n- in head\n"]


def test_normalize_and_hunks():
    assert normalize("  - Read  THE header\n\n") == normalize("1. read the header")
    base = ["a\n", "b\n", "c\n"]
    assert diff_hunks(base, ["a\n", "x\n", "b\n", "c\n"]) == [(1, 1, ["x\n"])]
    assert diff_hunks(base, ["a\n", "c\n"]) == [(1, 2, [])]
    assert diff_hunks(base, base) == []


def run_driver(tmp_path, base, ours, theirs, env=None):
    paths = []
    for name, text in (("O", base), ("A", ours), ("B", theirs)):
        path = tmp_path / name
        path.write_text(text)
        paths.append(str(path))
    completed = subprocess.run(
        [sys.executable, "-m", "t2s.mergedriver", *paths, "7", "SKILL.md"],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False,
    )
    return completed.returncode, (tmp_path / "A").read_text(), completed.stderr


def test_driver_process_writes_ours_and_exits_by_openness(tmp_path):
    ours = BASE.replace("- Save to the output path.", "- Save with openpyxl.")
    theirs = BASE.replace("- Save to the output path.", "- Save a copy.")
    status, text, stderr = run_driver(tmp_path, BASE, ours, theirs)
    assert (status, text) == (0, ours)
    assert "SKILL.md: 1 competing edit(s) had equal support; kept ours" in stderr

    support = tmp_path / "support.json"
    support.write_text(json.dumps({}))
    log = tmp_path / "conflicts.jsonl"
    status, text, _ = run_driver(tmp_path, BASE, ours, theirs,
                                 {"T2S_SUPPORT_FILE": str(support), "T2S_CONFLICT_LOG": str(log)})
    assert status == 1 and "<<<<<<< ours" in text
    [record] = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["path"] == "SKILL.md" and record["resolution"] == "open"

    write_support(support, {block_key("- Save a copy."): 2})
    status, text, _ = run_driver(tmp_path, BASE, ours, theirs, {"T2S_SUPPORT_FILE": str(support)})
    assert (status, text) == (0, theirs)
    support.write_text(json.dumps({block_key("- Save with openpyxl."): 3}))  # JSON works too
    status, text, _ = run_driver(tmp_path, BASE, ours, theirs, {"T2S_SUPPORT_FILE": str(support)})
    assert (status, text) == (0, ours)


def test_driver_with_unreadable_support_map_warns_and_merges(tmp_path):
    ours = with_reading("- Check merged cells.")
    status, text, stderr = run_driver(tmp_path, BASE, ours, BASE,
                                      {"T2S_SUPPORT_FILE": str(tmp_path / "missing.json")})
    assert status == 0 and text == ours
    assert "cannot read the support map" in stderr


def test_two_new_sections_with_one_title_become_one_section():
    ours = BASE + "\n## Dates\n\n- Dates are serial numbers.\n"
    theirs = BASE + "\n## Dates\n\n- Dates can be text.\n"
    text = merge_texts(BASE, ours, theirs).text
    assert text.count("## Dates") == 1
    assert text.index("- Dates are serial numbers.") < text.index("- Dates can be text.")
