import json
from pathlib import Path

import pytest

from t2s.errors import ConfigError
from t2s.evaluate import (
    NO_SKILL, EvalReport, SkillSpec, format_report, measure_column, resolve_skill_specs,
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
