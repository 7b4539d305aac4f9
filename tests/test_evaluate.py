import json
from pathlib import Path

import pytest

from t2s.errors import ConfigError
from t2s.evaluate import (
    NO_SKILL,
    EvalReport,
    SkillSpec,
    format_report,
    measure_column,
    resolve_skill_specs,
    write_report,
)
from t2s.skill import Skill
from t2s.tasks import Task, TestCase
from t2s.trajectory import Trajectory

SKILL = Skill({
    "SKILL.md": "---\nname: demo\ndescription: A demo skill.\n---\n# Demo\n\n## Workflow\n\nDo it.\n\n"
                "## Checking\n\nCheck it. See [notes](references/notes.md).\n",
    "references/notes.md": "# Notes\n",
})


def make_task(task_id, kind):
    case = TestCase("1", Path("in.xlsx"), Path("gold.xlsx"))
    return Task(task_id, "do it", "Cell-Level Manipulation", "A1", None, None, kind, (case,))


def save(run_dir, task_id, score, hard, tokens=100, seconds=2.0, refs=(), sections=(), error=""):
    Trajectory(
        run_id="r", task_id=task_id, score=score, hard=hard, label="success" if hard else "failure",
        tokens={"prompt": tokens - 10, "completion": 10, "prompt_eval": 0},
        timings={"total": seconds, "model": 0.0, "tools": 0.0, "check": 0.0},
        references_opened=list(refs), sections_cited=list(sections), error=error,
    ).save(run_dir / "trajectories" / f"{task_id}.json")


def sample_report(tmp_path):
    tasks = [make_task("a", "cell-level"), make_task("b", "cell-level"), make_task("c", "sheet-level")]
    with_skill, without = tmp_path / "with", tmp_path / "without"
    save(with_skill, "a", 1.0, True, refs=["references/notes.md"], sections=["Workflow", "Workflow"])
    save(with_skill, "b", 0.5, False, tokens=300, sections=["Workflow"])
    save(with_skill, "c", 1.0, True, seconds=4.0)
    save(without, "a", 0.0, False)
    save(without, "b", 0.5, False, error="model reply was not JSON")
    # Task c has no trajectory without the skill: its worker crashed; it counts as failed.
    columns = [
        measure_column(SkillSpec("main", "main", "a" * 40, SKILL), with_skill, tasks),
        measure_column(SkillSpec(NO_SKILL), without, tasks),
    ]
    return EvalReport("Evaluation", "mini", "test", "scripted", ["a", "b", "c"], columns)


def test_columns_are_measured_from_trajectories(tmp_path):
    report = sample_report(tmp_path)
    main, none = report.columns
    assert (main.solved, main.soft, main.hard) == (2, pytest.approx(2.5 / 3), pytest.approx(2 / 3))
    assert main.by_kind() == {"cell-level": {"tasks": 2, "soft": 0.75, "hard": 0.5},
                              "sheet-level": {"tasks": 1, "soft": 1.0, "hard": 1.0}}
    assert main.tokens_per_task == pytest.approx(500 / 3)
    assert (none.solved, none.soft, none.errors) == (0, pytest.approx(0.5 / 3), 2)
    assert none.outcomes[2].error == "no trajectory"


def test_skill_usage_counts_tasks_and_lists_unused_sections(tmp_path):
    usage = sample_report(tmp_path).columns[0].usage
    assert usage.references_opened == {"references/notes.md": 1}
    assert usage.sections_cited == {"Workflow": 2}  # two tasks, however often each cited it
    assert usage.unused_sections == ["Demo", "Checking"]
    assert usage.unused_references == []
    assert sample_report(tmp_path).columns[1].usage.sections_cited == {}


def test_table_shows_deltas_to_the_first_column(tmp_path):
    text = format_report(sample_report(tmp_path))
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "2" in lines["solved (of 3)"] and "0 (-2)" in lines["solved (of 3)"]
    assert "0.833" in lines["soft score"] and "0.167 (-0.667)" in lines["soft score"]
    assert "soft: sheet-level (1)" in lines
    assert "Workflow (2)" in text and "Demo; Checking" in text


def test_report_files_are_written(tmp_path):
    report = sample_report(tmp_path)
    write_report(report, tmp_path / "out")
    markdown = Path(report.files["markdown"]).read_text()
    assert "| measure | main | no skill |" in markdown
    assert "| soft score | 0.833 | 0.167 (-0.667) |" in markdown
    assert "Skill usage" in markdown
    data = json.loads(Path(report.files["json"]).read_text())
    assert data["columns"][0]["summary"]["solved"] == 2
    assert EvalReport.from_dict(data).columns[1].outcomes[2].error == "no trajectory"
    assert Path(report.files["plot"]).read_bytes()[:4] == b"\x89PNG"


def test_skill_directories_and_duplicates(tmp_path):
    SKILL.to_dir(tmp_path / "skill")
    specs = resolve_skill_specs(tmp_path / "no-repo", [str(tmp_path / "skill")], no_skill=True)
    assert [s.label for s in specs] == [str(tmp_path / "skill"), NO_SKILL]
    assert specs[0].key.startswith("dir-") and specs[1].key == "no-skill"
    with pytest.raises(ConfigError, match="given twice"):
        resolve_skill_specs(tmp_path, [str(tmp_path / "skill")] * 2, no_skill=False)
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        resolve_skill_specs(tmp_path, [], no_skill=False)


# -- ablation: which skills are measured ----------------------------------------------------


def build_run(tmp_path):
    """A skills repository with three patches of run `r1`; the result merges patches 1 and 2."""
    from t2s.repo import PatchCommit, SkillsRepo

    repo = SkillsRepo.init(tmp_path / "skills_repo")
    base = repo.resolve("main")
    skill = repo.read_skill(base)
    text = skill.files["SKILL.md"]
    one = skill.with_file("SKILL.md", text.replace(
        "## Workflow\n", "## Workflow\n\nLesson one: read headers first.\n", 1))
    two = skill.with_file("SKILL.md", text + "\n## Dates\n\nLesson two: dates are serials.\n")
    three = skill.with_file("SKILL.md", text + "\n## Noise\n\nLesson three.\n")
    shas = [
        repo.create_patch_branch("r1", n, base, patched, PatchCommit(lesson=f"Lesson {n}", task=f"t{n}"))
        for n, patched in ((1, one), (2, two), (3, three))
    ]
    merged = repo.merge_tree(shas[0], shas[1])
    assert merged.clean
    result = repo.commit_tree(merged.tree, shas[:2], "Merge patches 1 and 2\n")
    repo.update_refs({"t2s/r1/result": result})
    return repo, base, shas, result


def test_ablation_measures_each_patch_alone_and_removed(tmp_path):
    from t2s.evaluate import ablation_columns

    repo, base, shas, result = build_run(tmp_path)
    specs, lessons = ablation_columns(repo, "r1")
    labels = [spec.label for spec in specs]
    assert labels == ["base", "result", "patch 1 alone", "result without 1", "patch 2 alone",
                      "result without 2", "patch 3 alone"]
    by_label = {spec.label: spec for spec in specs}
    assert by_label["base"].commit == base and by_label["result"].commit == result
    assert by_label["patch 2 alone"].commit == shas[1]
    without_one = by_label["result without 1"].skill.files["SKILL.md"]
    assert "Lesson one" not in without_one and "Lesson two" in without_one
    without_two = by_label["result without 2"].skill.files["SKILL.md"]
    assert "Lesson one" in without_two and "Lesson two" not in without_two
    assert [lesson["in_result"] for lesson in lessons] == [True, True, False]
    assert lessons[0]["lesson"] == "Lesson 1" and lessons[0]["task"] == "t1"
    assert "dropped by consolidation" in lessons[2]["note"]
    # The reverted skills are kept as branches, so a rerun measures the very same commits.
    again, _ = ablation_columns(repo, "r1")
    assert [s.commit for s in again] == [s.commit for s in specs]
    assert repo.branches("t2s/r1/ablate/")["t2s/r1/ablate/without-1"] == by_label["result without 1"].commit


def test_ablation_of_an_unknown_run_is_a_clear_error(tmp_path):
    from t2s.errors import RunError
    from t2s.evaluate import resolve_ablation_run

    repo, *_ = build_run(tmp_path)
    assert resolve_ablation_run(repo, tmp_path / "runs", "r1") == "r1"
    with pytest.raises(RunError, match="no run 'nope'"):
        resolve_ablation_run(repo, tmp_path / "runs", "nope")


def test_limit_takes_each_kind_in_turn():
    from t2s.evaluate import limit_tasks

    tasks = [make_task(f"{kind}-{n}", kind) for kind in ("dates", "lookup", "totals") for n in (1, 2)]
    assert [t.id for t in limit_tasks(tasks, 4)] == ["dates-1", "lookup-1", "totals-1", "dates-2"]
    assert limit_tasks(tasks, None) == tasks and limit_tasks(tasks, 10) == tasks
