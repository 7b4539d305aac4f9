"""Analysts: success analyst, agentic error analyst with its quality gate, gold guard, resume."""

from __future__ import annotations

import json
from pathlib import Path

import openpyxl
import pytest
from scripted import ScriptedSource

from t2s.analysts import run_analysis
from t2s.analysts.goldguard import gold_markers
from t2s.analysts.records import AnalysisRecord
from t2s.repo import SkillsRepo
from t2s.skill import validate_skill
from t2s.tasks import load_suite
from t2s.trajectory import Step, Trajectory

RUN_ID = "r1"

# Three small tasks: the answer goes in B1 of Sheet1.
TASKS = {
    "sum-a": ([11, 22, 33, 44], "Write the sum of A1:A4 in B1.", 110),
    "sum-b": ([5, 15, 25, 35], "Write the sum of A1:A4 in B1.", 80),
    "max-c": ([12, 97, 40, 8], "Write the largest value of A1:A4 in B1.", 97),
}


def _workbook(path: Path, values: list, answer=None) -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Sheet1"
    for row, value in enumerate(values, 1):
        sheet.cell(row, 1, value)
    if answer is not None:
        sheet["B1"] = answer
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)


def make_suite(root: Path) -> Path:
    suite = root / "suite"
    entries = []
    for task_id, (values, instruction, answer) in TASKS.items():
        folder = suite / "spreadsheet" / task_id
        _workbook(folder / f"1_{task_id}_input.xlsx", values)
        _workbook(folder / f"1_{task_id}_answer.xlsx", values, answer)
        entries.append(
            {
                "id": task_id,
                "instruction": instruction,
                "instruction_type": "Cell-Level Manipulation",
                "answer_position": "Sheet1!B1",
                "spreadsheet_path": f"spreadsheet/{task_id}",
            }
        )
    (suite / "dataset.json").write_text(json.dumps(entries))
    return suite


def make_run(
    root: Path, outcomes: dict[str, object], skill_dir: Path | None = None
) -> tuple[Path, SkillsRepo]:
    """A run whose agent wrote `outcomes[task]` into B1 (the gold value means success)."""
    suite = make_suite(root)
    repo = SkillsRepo.init(root / "skills_repo", from_dir=skill_dir)
    base = repo.resolve("main")
    run_dir = root / "runs" / RUN_ID
    (run_dir / "trajectories").mkdir(parents=True)
    (run_dir / "run.json").write_text(
        json.dumps({"run_id": RUN_ID, "suite": str(suite), "skill_commit": base})
    )
    for task_id, written in outcomes.items():
        values, instruction, answer = TASKS[task_id]
        output = run_dir / "outputs" / task_id / "1.xlsx"
        _workbook(output, values, written)
        solved = written == answer
        Trajectory(
            run_id=RUN_ID,
            task_id=task_id,
            suite=suite.name,
            case="1",
            skill_ref="main",
            skill_commit=base,
            model="scripted",
            instruction=instruction,
            steps=[
                Step(
                    1,
                    "Look at the data first.",
                    "Workflow",
                    "inspect",
                    {},
                    "A1:A4 numbers",
                    True,
                    0.1,
                ),
                Step(
                    2,
                    "Compute and write the answer.",
                    "Writing answers",
                    "run_python",
                    {"code": f"ws['B1'] = {written!r}"},
                    "saved",
                    True,
                    0.2,
                ),
            ],
            output_path=str(output.relative_to(run_dir)),
            outputs={"1": str(output.relative_to(run_dir))},
            score=1.0 if solved else 0.0,
            hard=solved,
            label="success" if solved else "failure",
            mismatches=[]
            if solved
            else [
                {"case": "1", "sheet": "Sheet1", "cell": "B1", "expected": answer, "got": written}
            ],
            turns=2,
            stopped="finish",
        ).save(run_dir / "trajectories" / f"{task_id}.json")
    return run_dir, repo


GOOD_LESSON = "Reopen the saved workbook and print the answer cells before finishing."
CAUSAL_LESSON = "Sum every data row: derive the last row from max_row instead of guessing it."


def _patch(lessons: list[str], content: str) -> dict:
    return {
        "lessons": lessons,
        "reasoning": "The agent only knew it was right because it checked the output.",
        "edits": [
            {
                "op": "append_to_section",
                "file": "SKILL.md",
                "section": "Checking your work",
                "anchor": "",
                "target": "",
                "content": content,
            }
        ],
    }


def success_reply(
    lessons=(GOOD_LESSON,), content="- Reopen the output and print the answer cells."
):
    return {
        "solution_path": "Inspect A1:A4, sum with Python, write B1, save.",
        **_patch(list(lessons), content),
    }


def fix_code(value_expression: str) -> str:
    return (
        "import openpyxl\n"
        "wb = openpyxl.load_workbook('fixed.xlsx')\n"
        "ws = wb['Sheet1']\n"
        f"ws['B1'] = {value_expression}\n"
        "wb.save('fixed.xlsx')\n"
    )


def step(tool: str, args: dict, thought: str = "") -> dict:
    return {"thought": thought or f"use {tool}", "section": "", "tool": tool, "args": args}


def submit(lessons=(CAUSAL_LESSON,), content="- Find the last data row with ws.max_row."):
    return step(
        "submit_lessons",
        {
            "diagnosis": "B1 summed too few rows; fixed by summing A1:A4.",
            **_patch(list(lessons), content),
        },
    )


def analyst_model(error_steps: list[dict], success=None):
    """One reply function for both analysts: the error analyst's steps follow its turn count."""

    prompts: list[str] = []

    def reply(messages, options):
        if len(messages) == 2:
            prompts.append(messages[1]["content"])
        if "error analyst" not in messages[0]["content"]:
            return success if success is not None else success_reply()
        turn = sum(1 for message in messages if message["role"] == "assistant")
        return error_steps[min(turn, len(error_steps) - 1)]

    source = ScriptedSource([reply])
    source.prompts = prompts  # filled when the analysis runs in this process (workers=1)
    return source


FIXING_STEPS = [
    step("check", {}),
    step("read", {"workbook": "input", "range": "A1:A4"}),
    step("run_python", {"code": fix_code("sum(ws[f'A{r}'].value for r in range(1, 5))")}),
    submit(),
]


def analyse(run_dir, repo, source, **options):
    options.setdefault("workers", 1)
    options.setdefault("turns", 6)
    return run_analysis(run_dir, repo, model=source, progress=False, **options)


def record(run_dir: Path, task_id: str) -> AnalysisRecord:
    return AnalysisRecord.load(run_dir / "analysis" / f"{task_id}.json")


def test_success_trajectory_becomes_a_patch_branch_with_trailers(tmp_path):
    run_dir, repo = make_run(tmp_path, {"sum-b": 80})
    summary = analyse(run_dir, repo, analyst_model([step("check", {})]))

    assert summary.count("branch") == 1 and summary.analysed == 1
    result = record(run_dir, "sum-b")
    assert result.status == "branch" and result.analyst == "success"
    assert result.solution_path.startswith("Inspect A1:A4")
    # n is the task's place among the suite's sorted ids (max-c, sum-a, sum-b).
    assert result.branch == f"t2s/{RUN_ID}/patch/3"
    info = repo.commit_info(result.branch)
    assert info.subject == GOOD_LESSON
    assert info.parents == [repo.resolve("main")]
    trailers = repo.trailers(result.branch)
    assert trailers["T2S-Run"] == RUN_ID
    assert trailers["T2S-Task"] == "sum-b"
    assert trailers["T2S-Trajectory"] == "trajectories/sum-b.json"
    assert trailers["T2S-Outcome"] == "success"
    assert trailers["T2S-Analyst"] == "success"
    assert trailers["T2S-Model"] == "scripted"
    skill = repo.read_skill(result.branch)
    assert "- Reopen the output and print the answer cells." in skill.section_text(
        "Checking your work"
    )
    assert validate_skill(skill) == []
    note = repo.read_note(result.commit)
    assert "sum-b" in note and "What went right" in note and GOOD_LESSON in note


def test_error_analyst_with_a_passing_fix_makes_a_patch(tmp_path):
    run_dir, repo = make_run(tmp_path, {"sum-a": 100})
    source = analyst_model(FIXING_STEPS)
    summary = analyse(run_dir, repo, source)

    result = record(run_dir, "sum-a")
    assert result.status == "branch", result.reasons
    assert result.fixed and result.analyst == "error" and result.turns == 4
    assert [s["tool"] for s in result.steps] == ["check", "read", "run_python", "submit_lessons"]
    assert "PASS" in result.steps[2]["observation"]
    assert summary.fixed() == 1 and summary.count("branch") == 1
    trailers = repo.trailers(result.branch)
    assert trailers["T2S-Outcome"] == "failure" and trailers["T2S-Analyst"] == "error"
    assert "summed too few rows" in repo.read_note(result.commit)
    # The analyst saw the checker's report on the agent's output in its first prompt.
    assert "Sheet1!B1: expected 110, got 100" in source.prompts[0]
    # The gold workbook never entered the sandbox.
    sandbox = run_dir / "analysis" / "work" / "sum-a" / "sandbox"
    assert sorted(p.name for p in sandbox.iterdir()) == ["fixed.xlsx", "input.xlsx", "output.xlsx"]


def test_error_analyst_whose_fix_does_not_pass_is_dropped(tmp_path):
    run_dir, repo = make_run(tmp_path, {"sum-a": 100})
    steps = [step("run_python", {"code": fix_code("105")}), submit()]
    summary = analyse(run_dir, repo, analyst_model(steps), turns=3)

    result = record(run_dir, "sum-a")
    assert result.status == "dropped" and not result.fixed
    assert [r.kind for r in result.reasons] == ["not-fixed"]
    # Each early submission was refused with an observation saying why.
    assert [s["tool"] for s in result.steps] == ["run_python", "submit_lessons", "submit_lessons"]
    assert all(not s["ok"] and "refused" in s["error"] for s in result.steps[1:])
    assert summary.count("dropped") == 1 and summary.count("branch") == 0
    assert repo.branches("t2s/") == {}


def test_lesson_quoting_a_gold_value_is_rejected(tmp_path):
    run_dir, repo = make_run(tmp_path, {"sum-a": 100, "sum-b": 80})
    leaky = "The total of the column is 110, so write 110 in B1."
    steps = [*FIXING_STEPS[:3], submit(lessons=(leaky,))]
    success = success_reply(content="- When the sum is 80 the answer is right.")
    summary = analyse(run_dir, repo, analyst_model(steps, success=success))

    for task_id, value in (("sum-a", "110"), ("sum-b", "80")):
        result = record(run_dir, task_id)
        assert result.status == "rejected"
        assert [r.kind for r in result.reasons] == ["gold-leak"]
        assert repr(value) in result.reasons[0].detail
    assert summary.reasons()[("rejected", "gold-leak")] == 2
    assert repo.branches("t2s/") == {}


def test_gold_markers_skip_values_the_agent_could_know(tmp_path):
    make_suite(tmp_path)
    task = load_suite(tmp_path / "suite").tasks[0]  # sum-a: inputs 11..44, answer 110
    markers = gold_markers(task, ["a skill that mentions 7 and 15"])
    assert markers.numbers == {110.0}
    assert markers.leaks("write 110.00 there") == ["110"]
    assert markers.leaks("write 1,110 there") == []
    assert markers.leaks("sum the 4 cells of A1:A4 (11 to 44)") == []


def test_unusable_patch_is_rejected_with_the_reason(tmp_path):
    run_dir, repo = make_run(tmp_path, {"sum-b": 80})
    bad_section = success_reply()
    bad_section["edits"][0]["section"] = "No Such Section"
    analyse(run_dir, repo, analyst_model([step("check", {})], success=bad_section))
    result = record(run_dir, "sum-b")
    assert result.status == "rejected"
    assert result.reasons[0].kind == "not-applicable"
    assert "No Such Section" in result.reasons[0].detail
    assert result.applied["refused"]


def test_second_run_does_nothing_and_errors_can_be_retried(tmp_path):
    run_dir, repo = make_run(tmp_path, {"sum-a": 100, "sum-b": 80, "max-c": 97})
    first = analyse(run_dir, repo, analyst_model(FIXING_STEPS), analysts="combined")
    assert first.analysed == 3 and first.count("branch") == 3
    refs = repo.branches("t2s/")

    again = ScriptedSource(["not called"])
    second = analyse(run_dir, repo, again)
    assert second.analysed == 0 and second.skipped == 3 and again.loads == []
    assert second.count("branch") == 3 and repo.branches("t2s/") == refs

    # An analysis that broke is recorded as an error and analysed again only when asked.
    path = run_dir / "analysis" / "max-c.json"
    broken = AnalysisRecord.load(path)
    broken.status = "error"
    broken.save(path)
    assert analyse(run_dir, repo, again).analysed == 0
    retried = analyse(run_dir, repo, analyst_model(FIXING_STEPS), retry_errors=True)
    assert retried.analysed == 1 and record(run_dir, "max-c").status == "branch"
    assert repo.branches("t2s/") == refs  # the same branch, idempotently


def test_analysts_option_selects_trajectories(tmp_path):
    run_dir, repo = make_run(tmp_path, {"sum-a": 100, "sum-b": 80})
    summary = analyse(run_dir, repo, analyst_model(FIXING_STEPS), analysts="error")
    assert summary.selected == 1 and summary.trajectories == 2
    assert [r.task_id for r in summary.records] == ["sum-a"]
    assert not (run_dir / "analysis" / "sum-b.json").exists()


def test_unparseable_reply_is_recorded_not_raised(tmp_path):
    run_dir, repo = make_run(tmp_path, {"sum-a": 100, "sum-b": 80})
    source = ScriptedSource(["this is not JSON"])
    summary = analyse(run_dir, repo, source)
    success, failure = record(run_dir, "sum-b"), record(run_dir, "sum-a")
    assert success.status == "error" and success.reasons[0].kind == "model-failed"
    assert "not valid JSON" in success.reasons[0].detail
    # The error analyst's invalid steps cost turns; it never fixed anything, so it is dropped.
    assert failure.status == "dropped" and failure.turns == 6
    assert all("invalid step" in s["error"] for s in failure.steps)
    assert summary.count("error") == 1 and summary.count("dropped") == 1


def test_a_crashing_analysis_is_recorded_as_an_error(tmp_path):
    run_dir, repo = make_run(tmp_path, {"sum-b": 80})

    def crash(messages, options):
        raise RuntimeError("the back-end fell over")

    summary = analyse(run_dir, repo, ScriptedSource([crash]))
    result = record(run_dir, "sum-b")
    assert result.status == "error" and result.reasons[0].kind == "worker-failed"
    assert "the back-end fell over" in result.reasons[0].detail
    assert summary.count("error") == 1


def test_pool_of_two_workers(tmp_path):
    run_dir, repo = make_run(tmp_path, {"sum-a": 100, "sum-b": 80, "max-c": 97})
    summary = analyse(run_dir, repo, analyst_model(FIXING_STEPS), workers=2)
    assert summary.analysed == 3
    statuses = {r.task_id: r.status for r in summary.records}
    assert statuses == {"sum-a": "branch", "sum-b": "branch", "max-c": "branch"}
    assert len(repo.branches(f"t2s/{RUN_ID}/patch/")) == 3


def test_missing_trajectories_is_a_clear_error(tmp_path):
    from t2s.errors import RunError

    repo = SkillsRepo.init(tmp_path / "skills_repo")
    with pytest.raises(RunError, match="run `t2s rollout` first"):
        run_analysis(tmp_path / "nowhere", repo, model=ScriptedSource(["x"]), progress=False)


@pytest.mark.model
def test_embedded_model_run_ends_with_a_summary_and_a_valid_repository(
    tmp_path, embedded_model_path
):
    from t2s.models import resolve_model

    # A short skill keeps the prompts, and so the test, small.
    skill_dir = tmp_path / "small-skill"
    skill_dir.mkdir()
    (skill_dir / "SKILL.md").write_text(
        "---\nname: small-sheets\ndescription: Answer spreadsheet tasks with openpyxl.\n---\n"
        "# Small sheets\n\n## Workflow\n\n1. Inspect the workbook.\n2. Compute in Python.\n"
        "3. Write the answer cells and save.\n\n## Checking your work\n\n"
        "- Reopen the output and print the answer cells.\n"
    )
    run_dir, repo = make_run(tmp_path, {"sum-a": 100, "sum-b": 80}, skill_dir=skill_dir)
    main_before = repo.resolve("main")
    summary = run_analysis(
        run_dir,
        repo,
        model=resolve_model(str(embedded_model_path)),
        workers=1,
        turns=2,
        max_tokens=96,  # too few for a whole patch: what matters is that failures are recorded
        progress=False,
    )
    assert summary.analysed == 2 and summary.selected == 2
    for result in summary.records:
        assert result.status in ("branch", "rejected", "dropped", "error")
        assert result.model == embedded_model_path.stem
        # Whatever happened, it is recorded with its reason.
        assert result.status == "branch" or result.reasons, result
        if result.analyst == "error" and result.status != "error":
            assert result.turns == 2 and len(result.steps) == 2
    # The repository: main untouched, and only valid one-commit patch branches of this run.
    assert repo.resolve("main") == main_before
    patch_refs = repo.branches("t2s/")
    assert set(patch_refs) == {r.branch for r in summary.records if r.status == "branch"}
    for branch in patch_refs:
        assert repo.commit_info(branch).parents == [main_before]
        assert validate_skill(repo.read_skill(branch)) == []
    repo.repo.git.fsck("--strict")


def test_agent_output_is_found_after_the_run_moved(tmp_path):
    from t2s.analysts.error import agent_output
    from t2s.tasks import TestCase

    run_dir = tmp_path / "moved-run"
    (run_dir / "outputs" / "t").mkdir(parents=True)
    (run_dir / "outputs" / "t" / "1.xlsx").write_bytes(b"workbook")
    case = TestCase("1", tmp_path / "in.xlsx", tmp_path / "gold.xlsx")
    for written in ("runs/r/outputs/t/1.xlsx", "/elsewhere/outputs/t/1.xlsx", "outputs/t/1.xlsx"):
        trajectory = Trajectory(run_id="r", task_id="t", case="1", outputs={"1": written})
        assert agent_output(trajectory, case, run_dir) == run_dir / "outputs" / "t" / "1.xlsx"
    missing = Trajectory(run_id="r", task_id="t", case="1", outputs={"1": "outputs/t/2.xlsx"})
    assert agent_output(missing, case, run_dir) is None
