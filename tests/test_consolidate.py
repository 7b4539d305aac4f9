"""Hierarchical consolidation: the tree of merge commits, support, operator, guardrails, resume."""

import json
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner
from scripted import ScriptedModel

from t2s import consolidate as consolidate_module
from t2s.cli import main as cli
from t2s.consolidate import (
    RARE_LESSONS_FILE,
    accept,
    consolidate,
    guard_patch,
)
from t2s.errors import ModelError, RunError
from t2s.mergedriver import block_key
from t2s.patch import Edit, Patch, apply_patch
from t2s.repo import PatchCommit, SkillsRepo
from t2s.skill import Skill, validate_skill

BASE_SKILL = """---
name: test-skill
description: A skill for tests of consolidation.
---
# Test skill

## Reading

- Open the workbook.

## Writing

- Save the output.
"""

PREVALENT = "- Find the header row before reading data."
SINGLETON = "- Paint the cells blue."


@pytest.fixture
def repo(tmp_path):
    skill_dir = tmp_path / "skill"
    skill_dir.mkdir()
    (skill_dir / "SKILL.md").write_text(BASE_SKILL)
    return SkillsRepo.init(tmp_path / "repo", from_dir=skill_dir)


def append(section, content):
    return Edit("append_to_section", "SKILL.md", section, "", "", content)


def replace(section, target, content):
    return Edit("replace_in_section", "SKILL.md", section, "", target, content)


def add_patch(repo, run, n, *edits, base="main"):
    base_sha = repo.resolve(base)
    skill = repo.read_skill(base_sha)
    applied = apply_patch(skill, Patch("because", ["lesson"], list(edits)))
    assert not applied.refused, applied.refused
    lesson = (edits[0].content or edits[0].section or edits[0].file).strip().splitlines()[0]
    return repo.create_patch_branch(run, n, base_sha, applied.skill,
                                    PatchCommit(lesson=lesson, run=run, task=f"task-{n}"))


def run_merge(repo, tmp_path, run="r1", **options):
    options.setdefault("progress", False)
    return consolidate(repo, run, run_dir=tmp_path / "runs" / run, **options)


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo.path), *args], capture_output=True, text=True,
                          check=True).stdout


def merge_refs(repo, run="r1"):
    return sorted(repo.branches(f"t2s/{run}/merge/"))


# -- the shape of the history ----------------------------------------------------------------


def test_tree_of_merge_commits_with_levels_parents_and_trailers(repo, tmp_path):
    patches = [add_patch(repo, "r1", n, append("Reading", f"- Lesson {n % 3}.")) for n in range(10)]
    result = run_merge(repo, tmp_path, batch=4, min_support=1)

    assert result.levels == 2 and len(result.nodes) == 4
    level_one = [node for node in result.nodes if node.level == 1]
    assert [node.parents for node in level_one] == [patches[0:4], patches[4:8], patches[8:10]]
    root = result.nodes[-1]
    assert root.parents == [node.sha for node in level_one]
    assert repo.resolve("t2s/r1/result") == root.sha == result.result_sha
    assert merge_refs(repo) == ["t2s/r1/merge/1/0", "t2s/r1/merge/1/1", "t2s/r1/merge/1/2",
                                "t2s/r1/merge/2/0"]

    info = repo.commit_info(root.sha)
    assert info.subject == "Merge 3 nodes (level 2, node 0) of run r1"
    assert info.trailers["T2S-Run"] == "r1"
    assert info.trailers["T2S-Level"] == "2"
    assert info.trailers["T2S-Model"] == "rules"
    assert info.trailers["T2S-Support"] == "10"  # 4 + 3 + 3 patches behind the three lessons
    assert "T2S-Fallback" not in info.trailers
    assert "- [4] Lesson 0. (patches 0, 3, 6, 9)" in info.body
    first = repo.commit_info(level_one[0].sha)
    assert first.subject == "Merge 4 patches (level 1, node 0) of run r1"
    assert first.trailers["T2S-Level"] == "1"

    graph = git(repo, "log", "--graph", "--oneline", "t2s/r1/result")
    assert "Merge 3 nodes (level 2, node 0) of run r1" in graph
    assert "Merge 4 patches (level 1, node 1) of run r1" in graph
    assert "|\\" in graph

    text = repo.read_skill(result.result_sha).files["SKILL.md"]
    assert text.count("- Lesson 0.") == 1 and "- Lesson 2." in text
    # blame goes through the merges to a patch commit
    lines = {line.text: line for line in repo.blame(result.result_sha, "SKILL.md")}
    assert lines["- Lesson 1."].sha in patches
    stored = json.loads((tmp_path / "runs/r1/merge/support" / f"{root.sha}.json").read_text())
    assert stored["lessons"][block_key("- Lesson 0.")]["support"] == 4


def test_single_patch_is_one_node_with_one_parent(repo, tmp_path):
    patch = add_patch(repo, "r1", 0, append("Reading", PREVALENT))
    result = run_merge(repo, tmp_path)
    assert result.levels == 1 and result.nodes[0].parents == [patch]
    assert repo.commit_info(result.result_sha).subject == "Consolidate 1 patch (level 1, node 0) of run r1"
    # with one patch, prevalence cannot apply: its lessons stay
    assert PREVALENT in repo.read_skill(result.result_sha).files["SKILL.md"]
    assert any("only 1 patch" in note for note in result.notes)


def test_no_patches_and_different_bases_are_clear_errors(repo, tmp_path):
    with pytest.raises(RunError, match="run r1 has no patch branches"):
        run_merge(repo, tmp_path)
    add_patch(repo, "r1", 0, append("Reading", "- One."))
    other = add_patch(repo, "r2", 0, append("Writing", "- Two."))
    repo.update_refs({"main": other})
    add_patch(repo, "r1", 1, append("Reading", "- Three."))
    with pytest.raises(RunError, match="2 different bases"):
        run_merge(repo, tmp_path)
    assert merge_refs(repo) == []


# -- support and the rules ----------------------------------------------------------------


def prevalence_run(repo):
    for n in range(5):
        add_patch(repo, "r1", n, append("Reading", PREVALENT))
    add_patch(repo, "r1", 5, append("Writing", SINGLETON))
    for n in range(6, 9):
        add_patch(repo, "r1", n, append("Writing", "- Keep formulas as formulas."))


def test_prevalent_lesson_survives_and_singleton_is_dropped_rules_only(repo, tmp_path):
    prevalence_run(repo)
    result = run_merge(repo, tmp_path, batch=2)
    text = repo.read_skill(result.result_sha).files["SKILL.md"]
    assert text.count(PREVALENT) == 1
    assert "- Keep formulas as formulas." in text
    assert SINGLETON not in text
    kept = {lesson.title: lesson for lesson in result.kept}
    assert kept["Find the header row before reading data."].support == 5
    assert kept["Find the header row before reading data."].patches == [0, 1, 2, 3, 4]
    dropped = {lesson.title: why for lesson, why in result.dropped}
    assert "support 1 is below 2" in dropped["Paint the cells blue."]
    assert validate_skill(repo.read_skill(result.result_sha)) == []


def test_singletons_can_move_to_a_reference(repo, tmp_path):
    prevalence_run(repo)
    result = run_merge(repo, tmp_path, batch=4, singletons="reference")
    skill = repo.read_skill(result.result_sha)
    assert SINGLETON in skill.files[RARE_LESSONS_FILE]
    assert SINGLETON not in skill.files["SKILL.md"]
    assert "(references/rare-lessons.md)" in skill.files["SKILL.md"]
    assert [lesson.title for lesson in result.moved] == ["Paint the cells blue."]
    assert validate_skill(skill) == []


def test_competing_replacements_go_to_the_better_supported_edit(repo, tmp_path):
    add_patch(repo, "r1", 0, replace("Writing", "- Save the output.", "- Save in place."))
    for n in range(1, 4):
        add_patch(repo, "r1", n, replace("Writing", "- Save the output.", "- Save a copy."))
    result = run_merge(repo, tmp_path, batch=2, min_support=1)
    text = repo.read_skill(result.result_sha).files["SKILL.md"]
    assert "- Save a copy." in text and "Save in place" not in text
    assert "- Save the output." not in text
    dropped = {lesson.title: why for lesson, why in result.dropped}
    assert "competing edit had more support" in dropped["Save in place."]


# -- the operator and guardrails ----------------------------------------------------------


PRINCIPLE = "- Locate the header row first; data starts below it."


def operator_reply(messages, options):
    return {
        "reasoning": "Five patches agree on headers; one idea about colours is idiosyncratic.",
        "lessons": ["Locate headers before reading"],
        "edits": [{"op": "append_to_section", "file": "SKILL.md", "section": "Reading",
                   "anchor": "", "target": "", "content": PRINCIPLE}],
    }


def test_operator_sees_support_and_its_patch_becomes_the_node(repo, tmp_path):
    prevalence_run(repo)
    model = ScriptedModel([operator_reply])
    result = run_merge(repo, tmp_path, batch=32, operator=model)
    [node] = result.nodes
    text = repo.read_skill(result.result_sha).files["SKILL.md"]
    assert PRINCIPLE in text and SINGLETON not in text and PREVALENT not in text
    prompt = model.calls[0][0][1]["content"]
    assert "support 5 (patches 0, 1, 2, 3, 4)" in prompt
    assert "support 1 (patches 5)" in prompt
    assert "Keep lessons with support 2 or more" in prompt
    assert model.calls[0][1].schema is not None
    message = repo.commit_info(result.result_sha)
    assert message.trailers["T2S-Model"] == "scripted"
    assert "T2S-Fallback" not in message.trailers
    # the operator's wording inherits the support of the lesson it restates
    kept = {lesson.title: lesson for lesson in result.kept}
    assert kept["Locate the header row first; data starts below it."].support >= 5
    dropped = {lesson.title: why for lesson, why in result.dropped}
    assert dropped["Paint the cells blue."] == "level 1 node 0: left out by the merge operator"
    assert "Operator's lessons:\n- Locate headers before reading" in message.body
    assert not node.fallback


def test_operator_gets_repair_rounds_with_the_reasons(repo, tmp_path):
    prevalence_run(repo)
    bad = {"reasoning": "x", "lessons": [], "edits": [
        {"op": "append_to_section", "file": "SKILL.md", "section": "No such section",
         "anchor": "", "target": "", "content": "- Something."}]}
    model = ScriptedModel([bad, operator_reply])
    result = run_merge(repo, tmp_path, operator=model)
    assert len(model.calls) == 2
    repair = model.calls[1][0][-1]["content"]
    assert "Your patch was not accepted" in repair and "No such section" in repair
    assert PRINCIPLE in repo.read_skill(result.result_sha).files["SKILL.md"]
    assert not result.fallbacks


@pytest.mark.parametrize("reply", ["this is not json", {"edits": "nonsense"}, []])
def test_nonsense_from_the_operator_falls_back_to_the_rules(repo, tmp_path, reply):
    prevalence_run(repo)
    model = ScriptedModel([reply])
    result = run_merge(repo, tmp_path, operator=model, repair_rounds=2)
    assert len(model.calls) == 3  # one try and two repair rounds
    assert len(result.fallbacks) == 1
    info = repo.commit_info(result.result_sha)
    assert info.trailers["T2S-Fallback"].startswith("no valid patch after 2 repair round(s)")
    assert "Fallback: the operator's answer was not used" in info.body
    text = repo.read_skill(result.result_sha).files["SKILL.md"]
    assert PREVALENT in text and SINGLETON not in text  # the rules result


class FailingModel:
    name = "broken"

    def __init__(self):
        self.calls = 0

    def chat(self, messages, options=None):
        self.calls += 1
        raise ModelError("server unreachable")


def test_model_error_falls_back_at_once(repo, tmp_path):
    prevalence_run(repo)
    model = FailingModel()
    result = run_merge(repo, tmp_path, batch=4, operator=model)
    assert model.calls == len(result.nodes) == 4
    assert len(result.fallbacks) == 4
    assert "the model failed: server unreachable" in result.fallbacks[0]
    assert PREVALENT in repo.read_skill(result.result_sha).files["SKILL.md"]


def base_skill():
    return Skill({"SKILL.md": BASE_SKILL})


def test_guardrail_refuses_missing_files_and_sections():
    patch = Patch("r", [], [
        Edit("append_to_section", "references/nope.md", "Reading", "", "", "- x"),
        Edit("append_to_section", "SKILL.md", "Nowhere at all", "", "", "- y"),
        append("Reading", "- Fine."),
    ])
    guarded = guard_patch(base_skill(), patch)
    reasons = [why for _edit, why in guarded.refused]
    assert "names file references/nope.md, which does not exist" in reasons[0]
    assert "not found" in reasons[1] and "Nowhere at all" in reasons[1]
    assert [edit.content for edit in guarded.applied] == ["- Fine."]
    assert guarded.ok and "- Fine." in guarded.skill.files["SKILL.md"]


def test_guardrail_withholds_edits_on_the_same_lines():
    patch = Patch("r", [], [
        replace("Writing", "- Save the output.", "- Save a copy."),
        replace("Writing", "- Save the output.", "- Save in place."),
        append("Reading", "- Elsewhere."),
    ])
    guarded = guard_patch(base_skill(), patch)
    [(edit, why)] = guarded.refused
    assert edit.content == "- Save in place." and why.startswith("withheld: it changes the same lines")
    assert "- Save a copy." in guarded.skill.files["SKILL.md"]
    assert "- Elsewhere." in guarded.skill.files["SKILL.md"]


def test_guardrail_refuses_an_edit_that_makes_the_skill_invalid():
    too_long = "\n".join(f"- line {i}" for i in range(600))
    guarded = guard_patch(base_skill(), Patch("r", [], [append("Reading", too_long)]))
    assert not guarded.ok
    assert guarded.skill == base_skill()
    assert any("500" in problem or "format" in problem for problem in guarded.problems())


def test_rules_result_keeps_under_the_line_limit(repo, tmp_path):
    for n in range(6):
        body = "\n".join(f"- Patch {n} detail {i}." for i in range(100))
        add_patch(repo, "r1", n, append("Reading", body))
    result = run_merge(repo, tmp_path, batch=8, min_support=1)
    skill = repo.read_skill(result.result_sha)
    assert validate_skill(skill) == []
    assert 400 < len(skill.files["SKILL.md"].splitlines()) < 500
    assert any("would reach 500 lines" in why for _lesson, why in result.dropped)


# -- resuming ------------------------------------------------------------------------------


def test_resume_after_a_kill_mid_level_redoes_nothing_and_leaves_no_stray_refs(
    repo, tmp_path, monkeypatch
):
    for n in range(9):
        add_patch(repo, "r1", n, append("Reading", f"- Lesson {n % 4}."))
    real_finish = consolidate_module._finish_node
    finished = []

    def killed_on_third(context, job, final):
        if len(finished) == 2:
            raise KeyboardInterrupt
        finished.append(job.index)
        return real_finish(context, job, final)

    monkeypatch.setattr(consolidate_module, "_finish_node", killed_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_merge(repo, tmp_path, batch=3)
    assert merge_refs(repo) == ["t2s/r1/merge/1/0", "t2s/r1/merge/1/1"]
    assert "t2s/r1/result" not in repo.branches("t2s/r1/result")
    done = {ref: repo.resolve(ref) for ref in merge_refs(repo)}

    monkeypatch.setattr(consolidate_module, "_finish_node", real_finish)
    calls = []
    monkeypatch.setattr(consolidate_module, "_finish_node",
                        lambda c, j, f: calls.append((j.level, j.index)) or real_finish(c, j, f))
    result = run_merge(repo, tmp_path, batch=3)
    assert calls == [(1, 2), (2, 0)]
    assert result.reused == 2
    assert {ref: repo.resolve(ref) for ref in done} == done
    assert merge_refs(repo) == ["t2s/r1/merge/1/0", "t2s/r1/merge/1/1", "t2s/r1/merge/1/2",
                                "t2s/r1/merge/2/0"]

    again = run_merge(repo, tmp_path, batch=3)
    assert again.reused == 4 and again.result_sha == result.result_sha


def test_a_new_batch_size_replaces_the_tree_and_removes_old_refs(repo, tmp_path):
    for n in range(5):
        add_patch(repo, "r1", n, append("Reading", f"- Lesson {n % 2}."))
    run_merge(repo, tmp_path, batch=2)
    assert len(merge_refs(repo)) == 3 + 2 + 1
    result = run_merge(repo, tmp_path, batch=8)
    assert merge_refs(repo) == ["t2s/r1/merge/1/0"]
    assert result.levels == 1


def test_lost_support_records_are_rebuilt_from_the_parents(repo, tmp_path):
    for n in range(6):
        add_patch(repo, "r1", n, append("Reading", f"- Lesson {n % 2}."))
    first = run_merge(repo, tmp_path, batch=2, min_support=1)
    for path in (tmp_path / "runs/r1/merge/support").iterdir():
        path.unlink()
    second = run_merge(repo, tmp_path, batch=2, min_support=1)
    assert second.reused == len(second.nodes)
    assert {l.title: l.support for l in second.kept} == {l.title: l.support for l in first.kept}


# -- scale ---------------------------------------------------------------------------------


def test_two_hundred_patches_with_the_scripted_operator(repo, tmp_path):
    lessons = [f"- Shared lesson {i}." for i in range(12)]
    for n in range(200):
        edits = [append("Reading" if n % 2 else "Writing", lessons[n % 12])]
        if n % 25 == 0:
            edits.append(replace("Writing", "- Save the output.", f"- Save output variant {n % 2}."))
        add_patch(repo, "r1", n, *edits)
    model = ScriptedModel([operator_reply])
    result = run_merge(repo, tmp_path, operator=model, workers=2)
    assert result.levels == 2 and len(result.nodes) == 8
    assert len(model.calls) == 8 and not result.fallbacks
    prompts = [call[0][1]["content"] for call in model.calls]
    assert all("This is not the last level" in prompt for prompt in prompts[:7])
    assert "Keep lessons with support 2 or more" in prompts[7]
    assert result.nodes[-1].patches == list(range(200))
    skill = repo.read_skill(result.result_sha)
    assert validate_skill(skill) == [] and PRINCIPLE in skill.files["SKILL.md"]
    assert repo.commit_info(result.result_sha).trailers["T2S-Patches"] == "200"


# -- accept and the command line --------------------------------------------------------------


def test_accept_fast_forwards_main_and_refuses_when_main_moved(repo, tmp_path):
    add_patch(repo, "r1", 0, append("Reading", PREVALENT))
    result = run_merge(repo, tmp_path)
    done = accept(repo, "r1")
    assert done.moved and repo.resolve("main") == result.result_sha
    assert PREVALENT in (repo.path / "SKILL.md").read_text()  # the work tree follows main
    assert not accept(repo, "r1").moved

    add_patch(repo, "r2", 0, append("Writing", "- Other."))
    other = add_patch(repo, "r3", 0, append("Writing", "- Moved main."))
    run_merge(repo, tmp_path, run="r2")
    repo.move_branch("main", other)
    with pytest.raises(RunError, match=f"main moved elsewhere since run r2 started: main is {other[:10]}, "
                                       f"the run's base {result.result_sha[:10]}"):
        accept(repo, "r2")
    assert repo.resolve("main") == other


def test_accept_fast_forwards_through_earlier_rounds(repo, tmp_path):
    """As after `t2s evolve --rounds 2`: round 2's patches are based on round 1's result."""
    start = repo.resolve("main")
    add_patch(repo, "ev-r1", 0, append("Reading", PREVALENT))
    first = run_merge(repo, tmp_path, run="ev-r1")
    add_patch(repo, "ev-r2", 0, append("Writing", "- Check the totals."), base="t2s/ev-r1/result")
    second = run_merge(repo, tmp_path, run="ev-r2")
    add_patch(repo, "other", 0, append("Writing", "- Unrelated."))  # a run main does not take
    run_merge(repo, tmp_path, run="other")

    done = accept(repo, "ev-r2")
    assert done.moved and done.previous_main == start and done.also_accepted == ["ev-r1"]
    assert repo.resolve("main") == second.result_sha
    assert "- Check the totals." in (repo.path / "SKILL.md").read_text()
    # Round 1 is already in main: nothing moves, main does not go back.
    again = accept(repo, "ev-r1")
    assert not again.moved and again.result_sha == first.result_sha
    assert repo.resolve("main") == second.result_sha
    # A run on the old base is no fast-forward any more.
    with pytest.raises(RunError, match="main moved elsewhere since run other started"):
        accept(repo, "other")
    assert repo.resolve("main") == second.result_sha


def test_cli_merge_accept_and_errors(repo, tmp_path):
    prevalence_run(repo)
    runner = CliRunner()
    common = ["--repo", str(repo.path), "--runs-dir", str(tmp_path / "runs")]
    outcome = runner.invoke(cli, ["merge", "r1", "--rules-only", "--batch", "4", *common])
    assert outcome.exit_code == 0, outcome.output
    assert "Merged 9 patches of run r1 in 2 levels (4 nodes, 0 reused)" in outcome.output
    assert "kept    [5] Find the header row before reading data. (patches 0, 1, 2, 3, 4)" in \
        outcome.output
    assert "t2s accept r1" in outcome.output
    assert (tmp_path / "runs/r1/merge/result.json").is_file()

    outcome = runner.invoke(cli, ["accept", "r1", "--repo", str(repo.path)])
    assert outcome.exit_code == 0 and "(run r1 accepted)" in outcome.output
    outcome = runner.invoke(cli, ["accept", "r1", "--repo", str(repo.path)])
    assert outcome.exit_code == 0 and "main already contains the result of run r1" in outcome.output

    # r2 builds on r1's result and r3 on r2's: accepting r3 takes main through both; r4, on the
    # old base, is refused with one line.
    add_patch(repo, "r4", 0, append("Writing", "- On the old base."), base="main")
    add_patch(repo, "r2", 0, append("Writing", "- Second."), base="t2s/r1/result")
    assert runner.invoke(cli, ["merge", "r2", "--rules-only", *common]).exit_code == 0
    add_patch(repo, "r3", 0, append("Writing", "- Third."), base="t2s/r2/result")
    assert runner.invoke(cli, ["merge", "r3", "--rules-only", *common]).exit_code == 0
    outcome = runner.invoke(cli, ["accept", "r3", "--repo", str(repo.path)])
    assert outcome.exit_code == 0, outcome.output
    assert "(run r3 accepted, and with it r2)" in outcome.output
    assert runner.invoke(cli, ["merge", "r4", "--rules-only", *common]).exit_code == 0
    outcome = runner.invoke(cli, ["accept", "r4", "--repo", str(repo.path)])
    assert outcome.exit_code == 1 and len(outcome.output.splitlines()) == 1
    assert outcome.output.startswith("Error: main moved elsewhere since run r4 started")
    assert "`git merge t2s/r4/result`" in outcome.output

    outcome = runner.invoke(cli, ["merge", "nothing-here", "--rules-only", *common])
    assert outcome.exit_code == 1
    assert "Error: run nothing-here has no patch branches" in outcome.output
    outcome = runner.invoke(cli, ["accept", "nothing-here", "--repo", str(repo.path)])
    assert outcome.exit_code == 1 and "has no result branch" in outcome.output


# -- the real model ------------------------------------------------------------------------


@pytest.mark.model
def test_real_merge_of_three_patches_with_the_embedded_model(repo, tmp_path, embedded_model_path):
    from t2s.models import resolve_model

    add_patch(repo, "r1", 0, append("Reading", PREVALENT))
    add_patch(repo, "r1", 1, append("Reading", PREVALENT))
    add_patch(repo, "r1", 2, append("Writing", SINGLETON))
    source = resolve_model(str(embedded_model_path))
    result = run_merge(repo, tmp_path, model=source, max_tokens=64, repair_rounds=0)
    skill = repo.read_skill(result.result_sha)
    assert validate_skill(skill) == []
    info = repo.commit_info(result.result_sha)
    assert info.trailers["T2S-Model"] != "rules"
    assert ("T2S-Fallback" in info.trailers) == bool(result.fallbacks)
    if result.fallbacks:  # the rules result: prevalence still applies
        assert PREVALENT in skill.files["SKILL.md"] and SINGLETON not in skill.files["SKILL.md"]


def test_a_last_level_node_is_not_reused_as_an_intermediate_one(repo, tmp_path):
    for n in range(4):
        add_patch(repo, "r1", n, append("Reading", f"- Lesson {n % 2}."))
    first = run_merge(repo, tmp_path, batch=4, min_support=3)
    assert first.kept == []  # as the last level, support 2 was not enough
    for n in range(4, 8):
        add_patch(repo, "r1", n, append("Reading", f"- Lesson {n % 2}."))
    second = run_merge(repo, tmp_path, batch=4, min_support=3)
    assert second.reused == 0 and second.levels == 2
    assert sorted(lesson.support for lesson in second.kept) == [4, 4]


def test_same_new_reference_from_two_patches_and_a_modify_delete_conflict(tmp_path):
    skill_dir = tmp_path / "skill"
    (skill_dir / "references").mkdir(parents=True)
    (skill_dir / "SKILL.md").write_text(BASE_SKILL + "\nSee [old notes](references/old.md).\n")
    (skill_dir / "references/old.md").write_text("# Old\n\n- An old note.\n")
    repo = SkillsRepo.init(tmp_path / "repo", from_dir=skill_dir)
    link = append("Reading", "- Dates: see [dates](references/dates.md).")
    for n, body in enumerate(["- Dates are serial numbers.", "- Dates can be text."]):
        create = Edit("create_file", "references/dates.md", "", "", "", f"# Dates\n\n{body}")
        add_patch(repo, "r1", n, create, link)
    add_patch(repo, "r1", 2, Edit("delete_file", "references/old.md"),
              replace("Writing", "See [old notes](references/old.md).", "- Save."))
    add_patch(repo, "r1", 3, Edit("append_to_section", "references/old.md", "Old", "", "",
                                  "- Another old note."))
    result = run_merge(repo, tmp_path)
    skill = repo.read_skill(result.result_sha)
    dates = skill.files["references/dates.md"]
    assert dates.count("# Dates") == 1
    assert "- Dates are serial numbers." in dates and "- Dates can be text." in dates
    assert skill.files["SKILL.md"].count("references/dates.md") == 1
    assert validate_skill(skill) == []
    assert any("changed on one side and deleted on the other" in note
               for note in result.nodes[-1].notes)


def test_cli_merge_with_accept_moves_main(repo, tmp_path):
    add_patch(repo, "r1", 0, append("Reading", PREVALENT))
    outcome = CliRunner().invoke(cli, ["merge", "r1", "--rules-only", "--accept", "--repo",
                                       str(repo.path), "--runs-dir", str(tmp_path / "runs")])
    assert outcome.exit_code == 0, outcome.output
    assert "(run r1 accepted)" in outcome.output
    assert repo.resolve("main") == repo.resolve("t2s/r1/result")


def test_a_deleted_reference_that_is_still_linked_comes_back(tmp_path):
    skill_dir = tmp_path / "skill"
    (skill_dir / "references").mkdir(parents=True)
    (skill_dir / "SKILL.md").write_text(BASE_SKILL + "\nSee [old notes](references/old.md).\n")
    (skill_dir / "references/old.md").write_text("# Old\n\n- An old note.\n")
    repo = SkillsRepo.init(tmp_path / "repo", from_dir=skill_dir)
    # two patches delete the file and its link; three rewrite the link line, which wins
    for n in range(2):
        add_patch(repo, "r1", n, Edit("delete_file", "references/old.md"),
                  replace("Writing", "See [old notes](references/old.md).", "- Save."))
    for n in range(2, 5):
        add_patch(repo, "r1", n, replace("Writing", "See [old notes](references/old.md).",
                                         "Read [the old notes](references/old.md) first."))
    result = run_merge(repo, tmp_path, batch=8)
    skill = repo.read_skill(result.result_sha)
    assert "Read [the old notes](references/old.md) first." in skill.files["SKILL.md"]
    assert "references/old.md" in skill.files
    assert validate_skill(skill) == []


def test_consolidation_starts_the_driver_without_site_packages(monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    config = consolidate_module.fast_driver_config()
    assert config["GIT_CONFIG_COUNT"] == "2"
    assert config["GIT_CONFIG_KEY_1"] == "merge.t2s-skill.driver"
    assert " -S " in config["GIT_CONFIG_VALUE_1"]
    assert config["GIT_CONFIG_VALUE_1"].endswith("mergedriver.py %O %A %B %L %P")


KILLER = """
import os, signal, sys
from t2s import consolidate as module
from t2s.repo import SkillsRepo
real, done = module._finish_node, []
def finish(context, job, final):
    if len(done) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    done.append(job.index)
    return real(context, job, final)
module._finish_node = finish
module.consolidate(SkillsRepo.open(sys.argv[1]), "r1", batch=3, run_dir=sys.argv[2], progress=False)
"""


def test_resume_after_a_real_sigkill(repo, tmp_path):
    for n in range(9):
        add_patch(repo, "r1", n, append("Reading", f"- Lesson {n % 4}."))
    killed = subprocess.run([sys.executable, "-c", KILLER, str(repo.path), str(tmp_path / "runs/r1")],
                            capture_output=True, text=True, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert merge_refs(repo) == ["t2s/r1/merge/1/0", "t2s/r1/merge/1/1"]
    result = run_merge(repo, tmp_path, batch=3)
    assert result.reused == 2 and len(result.nodes) == 4
    assert merge_refs(repo) == ["t2s/r1/merge/1/0", "t2s/r1/merge/1/1", "t2s/r1/merge/1/2",
                                "t2s/r1/merge/2/0"]
    assert validate_skill(repo.read_skill(result.result_sha)) == []
