"""The whole loop with a scripted model: rounds, history, reports, resuming, the CLI."""

import json
import re
from pathlib import Path

import openpyxl
import pytest
from click.testing import CliRunner
from scripted import ScriptedSource

from t2s.cli import main
from t2s.config import Config
from t2s.consolidate import accept
from t2s.evolve import evolve, load_state
from t2s.repo import SkillsRepo
from t2s.tasks import load_suite, split_tasks

# -- a tiny suite: the total of A1:A3 in B1, or twice the total --------------------------------

# Chosen so that the hash split gives both kinds on each side: train 2-5, test 1 and 8.
TASKS = [f"sum-{n}" for n in (1, 2, 3, 4, 5, 8)]


def is_double(task_id):
    return int(task_id.split("-")[1]) % 2 == 0


def write_book(path, values, answer=None):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Sheet1"
    for row, value in enumerate(values, 1):
        sheet.cell(row=row, column=1, value=value)
    if answer is not None:
        sheet["B1"] = answer
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)


def make_suite(root: Path) -> Path:
    entries = []
    for n, task_id in enumerate(TASKS, 1):
        values = [n, n + 1, 2 * n]
        double = is_double(task_id)
        entries.append({
            "id": task_id,
            "instruction": ("Put twice the total of A1:A3 in B1." if double
                            else "Put the total of A1:A3 in B1."),
            "instruction_type": "Cell-Level Manipulation",
            "answer_position": "B1",
            "answer_sheet": "Sheet1",
            "kind": "double" if double else "total",
        })
        folder = root / "spreadsheet" / task_id
        write_book(folder / f"1_{task_id}_input.xlsx", values)
        write_book(folder / f"1_{task_id}_answer.xlsx", values, sum(values) * (2 if double else 1))
    (root / "dataset.json").write_text(json.dumps(entries, indent=1))
    return root


# -- the scripted model: agent, analysts and merge operator each get sensible JSON -------------

def fix_code(double):
    factor = 2 if double else 1
    return (
        "import openpyxl\nsource = openpyxl.load_workbook('input.xlsx')['Sheet1']\n"
        "book = openpyxl.load_workbook('fixed.xlsx')\n"
        f"book['Sheet1']['B1'] = {factor} * sum(source.cell(row=r, column=1).value for r in (1, 2, 3))\n"
        "book.save('fixed.xlsx')\n"
    )


def next_lesson(text):
    """Lessons are numbered by what the skill already holds, so each round teaches a new one."""
    return len(re.findall(r"^- Lesson \d+", text, re.MULTILINE)) + 1


def edit(content):
    return {"op": "append_to_section", "file": "SKILL.md", "section": "Workflow",
            "anchor": "", "target": "", "content": content}


def reply(messages, options):
    system, user = messages[0]["content"], messages[1]["content"]
    turns = sum(1 for m in messages if m["role"] == "assistant")
    if system.startswith("You are a spreadsheet agent"):
        # Always the plain total: right for "total" tasks, wrong for "twice the total" ones.
        if turns == 0:
            return {"thought": "read the numbers", "section": "Workflow", "tool": "read_range",
                    "args": {"sheet": "Sheet1", "range": "A1:A3"}}
        if turns == 1:
            values = re.findall(r"A\d=(\d+)", messages[-1]["content"])
            return {"thought": "write the total", "section": "Writing answers",
                    "tool": "write_cells",
                    "args": {"sheet": "Sheet1", "cells": {"B1": sum(map(int, values))}}}
        return {"thought": "done", "section": "", "tool": "finish", "args": {"summary": "done"}}
    n = next_lesson(user)
    if system.startswith("You improve a skill"):
        lesson = f"Lesson {n}: compute totals in Python and write values, not formulas."
        return {"solution_path": "read the cells, sum them, write the value", "lessons": [lesson],
                "reasoning": "Writing values avoids uncalculated formulas.",
                "edits": [edit(f"- {lesson}")]}
    if system.startswith("You are an error analyst"):
        if "PASS" not in messages[-1]["content"]:
            double = "twice" in user
            return {"thought": "fix B1", "section": "", "tool": "run_python",
                    "args": {"code": fix_code(double)}}
        lesson = f"Lesson {n}: read the instruction to its end; it may scale the result."
        return {"thought": "fixed", "section": "", "tool": "submit_lessons",
                "args": {"diagnosis": "the agent ignored 'twice'", "lessons": [lesson],
                         "reasoning": "The instruction asked for a multiple of the total.",
                         "edits": [edit(f"- {lesson}")]}}
    if system.startswith("You are the merge operator"):
        proposed = list(dict.fromkeys(re.findall(r"^\s+new: (- Lesson .+)$", user, re.MULTILINE)))
        return {"reasoning": "The analysts agree; one edit keeps every recurring lesson.",
                "lessons": [line[2:] for line in proposed],
                "edits": [edit("\n".join(proposed))] if proposed else []}
    raise AssertionError(f"unexpected prompt: {system[:60]!r}")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    suite = make_suite(tmp_path / "suite")
    tasks = load_suite(suite).tasks
    train = split_tasks(tasks, "train", 0.5)
    assert {is_double(t.id) for t in train} == {True, False}, "the suite needs both kinds to train on"
    assert split_tasks(tasks, "test", 0.5)
    SkillsRepo.init(tmp_path / "skills_repo")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def config_for(root, **options):
    defaults = {"tasks": str(root / "suite"), "model": "scripted", "rounds": 2,
                "analysts": "combined", "workers": 1, "batch": 3, "turns": 4,
                "repo": str(root / "skills_repo"), "runs_dir": str(root / "runs"), "run_id": "ev"}
    return Config(**(defaults | options))


def scripted():
    return ScriptedSource([reply])


# -- tests ------------------------------------------------------------------------------------


def test_two_rounds_build_on_each_other(workspace, monkeypatch):
    # One round first, with no run id: a new run. The same options with two rounds continue it.
    first_run = evolve(config_for(workspace, rounds=1, run_id=None), progress=False,
                       model_source=scripted())
    assert not first_run.resumed and first_run.evolve_id.startswith("evolve-")
    result = evolve(config_for(workspace, rounds=2, run_id=None), progress=False,
                    model_source=scripted())
    assert result.resumed and result.evolve_id == first_run.evolve_id
    repo = SkillsRepo.open(workspace / "skills_repo")
    first, second = result.rounds
    assert first.done == ["rollout", "analysis", "merge", "eval"] and second.finished
    run = result.evolve_id
    assert first.run_id == f"{run}-r1" and second.run_id == f"{run}-r2"
    # Round 2 starts from round 1's result; main does not move without --accept.
    assert second.base_commit == first.result_commit == repo.resolve(f"t2s/{run}-r1/result")
    assert second.result_commit == repo.resolve(f"t2s/{run}-r2/result") == result.final_commit
    assert repo.resolve("main") == first.base_commit
    for state in (first, second):
        # Each round's patches are branches on that round's base (4 train tasks: 4 patches)...
        patches = repo.branches(f"t2s/{state.run_id}/patch/")
        assert len(patches) == state.patches == 4
        for sha in patches.values():
            assert repo.commit_info(sha).parents == [state.base_commit]
        # ... and the result is a merge commit that every patch reaches through the merge tree.
        assert repo.commit_info(state.result_commit).is_merge
        history = {info.sha for info in repo.log([state.result_commit])}
        assert set(patches.values()) <= history
    skill = repo.read_skill(result.final_commit).files["SKILL.md"]
    # Round 1 taught two lessons (numbered 1); round 2, reading them, taught two more (3).
    assert len(re.findall(r"^- Lesson 1: ", skill, re.MULTILINE)) == 2
    assert len(re.findall(r"^- Lesson 3: ", skill, re.MULTILINE)) == 2
    # Held-out: the agent solves the "total" test task and fails the "twice" one, any skill.
    for state in (first, second):
        assert state.scores["base"]["solved"] == state.scores["result"]["solved"] == 1
        assert state.scores["result"]["soft"] == pytest.approx(0.5)
    # Reports: per round, and over rounds.
    rounds = json.loads(Path(result.files["json"]).read_text())
    assert [r["round"] for r in rounds["rounds"]] == [1, 2]
    assert Path(result.files["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert "| 2 | 4 | 0.500 | 0.500 | +0.000 |" in Path(result.files["markdown"]).read_text()
    round_report = workspace / "runs" / run / "round-1" / "eval" / "report.md"
    assert "| soft score | 0.500 | 0.500 (±0.000) |" in round_report.read_text()
    # The finished run again through the CLI: one command accepts both rounds.
    import t2s.models

    monkeypatch.setattr(t2s.models, "resolve_model", lambda spec=None, **kw: scripted())
    options = config_for(workspace, run_id=run)
    outcome = CliRunner().invoke(main, [
        "evolve", "--quiet", "--run-id", run, "--rounds", "2", "--tasks", options.tasks,
        "--model", "scripted", "--workers", "1", "--batch", "3", "--turns", "4",
        "--analysts", "combined", "--repo", options.repo, "--runs-dir", options.runs_dir,
    ])
    assert outcome.exit_code == 0, outcome.output
    assert f"Accept it:      t2s accept {run}-r2 --repo {options.repo}\n" in outcome.output
    accepted = accept(repo, second.run_id)
    assert accepted.moved and accepted.also_accepted == [first.run_id]
    assert repo.resolve("main") == second.result_commit


def test_resume_after_interruption_at_each_stage(workspace, monkeypatch):
    """Interrupt each stage in turn; every rerun keeps what was done and goes one stage further."""
    import t2s.analysts as analysts_module
    import t2s.consolidate as consolidate_module
    import t2s.evolve as evolve_module
    import t2s.rollout as rollout_module
    from t2s.errors import ConfigError

    config = config_for(workspace, rounds=1)
    stages = [(rollout_module, "run_rollouts", []), (analysts_module, "run_analysis", ["rollout"]),
              (consolidate_module, "consolidate", ["rollout", "analysis"]),
              (evolve_module, "evaluate", ["rollout", "analysis", "merge"])]
    for module, name, done_before in stages:
        real = getattr(module, name)

        def interrupted(*args, _real=real, _name=name, **kwargs):
            # Half the work of the stage happens, then Ctrl-C.
            if _name == "run_rollouts":
                _real(args[0], args[1][:2], *args[2:], **kwargs)
            raise KeyboardInterrupt

        monkeypatch.setattr(module, name, interrupted)
        before = records(workspace / "runs")
        with pytest.raises(KeyboardInterrupt):
            evolve(config, progress=False, model_source=scripted())
        monkeypatch.setattr(module, name, real)
        state = load_state(workspace / "runs" / "ev")
        assert state.rounds[0].done == done_before, name
        # Nothing finished before this attempt was done again.
        after = records(workspace / "runs")
        assert {path: after[path] for path in before} == before, name
    assert len(list((workspace / "runs" / "ev" / "round-1" / "trajectories").glob("*.json"))) == 4
    result = evolve(config, progress=False, model_source=scripted())
    assert result.resumed and result.rounds[0].finished
    repo = SkillsRepo.open(workspace / "skills_repo")
    assert repo.resolve("t2s/ev-r1/result") == result.final_commit
    # The same run id with other options is refused rather than mixed.
    with pytest.raises(ConfigError, match="started with other options \\(analysts\\)"):
        evolve(config_for(workspace, rounds=1, analysts="error"), progress=False,
               model_source=scripted())


def records(runs):
    """Trajectory and analysis records with their modification times."""
    found = {}
    for pattern in ("**/trajectories/*.json", "**/analysis/*.json"):
        for path in runs.glob(pattern):
            found[path] = path.stat().st_mtime_ns
    return found


def test_cli_evolve_accept_then_eval_and_ablation(workspace, monkeypatch):
    import t2s.models

    monkeypatch.setattr(t2s.models, "resolve_model", lambda spec=None, **kw: scripted())
    common = ["--tasks", "suite", "--model", "scripted", "--workers", "1", "--quiet"]
    (workspace / "t2s.toml").write_text('batch = 3\nturns = 4\nanalysts = "combined"\n')
    outcome = CliRunner().invoke(main, ["evolve", *common, "--run-id", "ev", "--accept"])
    assert outcome.exit_code == 0, outcome.output
    repo = SkillsRepo.open(workspace / "skills_repo")
    assert repo.resolve("main") == repo.resolve("t2s/ev-r1/result")
    assert "Held-out score by round" in outcome.output
    assert "round 1: accepted: main moved to" in outcome.output
    assert "Result:         main (" in outcome.output
    assert "git -C skills_repo log --graph --oneline" in outcome.output
    assert load_state(workspace / "runs" / "ev").rounds[0].done[-2:] == ["accept", "eval"]

    start = repo.commit_info("t2s/ev-r1/result").parents[0]
    start = repo.commit_info(start).parents[0]  # a patch's parent: the starting skill
    outcome = CliRunner().invoke(main, ["eval", *common, "--skill", "main", "--skill", start,
                                        "--no-skill"])
    assert outcome.exit_code == 0, outcome.output
    assert re.search(r"solved \(of 2\)\s+1\s+1 \(±0\)\s+1 \(±0\)", outcome.output)
    assert "sections nobody used" in outcome.output and "Workflow (" in outcome.output
    written = re.search(r"Markdown: (\S+)", outcome.output).group(1)
    assert Path(written).is_file() and Path(written).with_name("scores.png").is_file()
    json_report = json.loads(Path(written).with_name("report.json").read_text())
    assert [c["label"] for c in json_report["columns"]] == ["main", start, "no skill"]

    outcome = CliRunner().invoke(main, ["eval", *common, "--ablate", "ev"])
    assert outcome.exit_code == 0, outcome.output
    assert "Ablation of ev-r1" in outcome.output
    assert re.search(r"Markdown: \S+ablation.md", outcome.output)
    rows = [line for line in outcome.output.splitlines() if re.match(r"\d+\s+Lesson 1", line)]
    assert len(rows) == 4 and all(line.rstrip().endswith("no effect") for line in rows)


def test_cli_reports_bad_options_in_one_line(workspace):
    (workspace / "t2s.toml").write_text("roundz = 2\n")
    outcome = CliRunner().invoke(main, ["evolve", "--quiet"])
    assert outcome.exit_code == 1
    assert outcome.output.startswith("Error: ") and "unknown option 'roundz'" in outcome.output
    assert len(outcome.output.strip().splitlines()) == 1
    (workspace / "t2s.toml").unlink()
    outcome = CliRunner().invoke(main, ["eval", "--tasks", "suite", "--quiet"])
    assert outcome.exit_code == 1 and "Error: nothing to evaluate" in outcome.output
    outcome = CliRunner().invoke(main, ["eval", "--tasks", "suite", "--ablate", "nope"])
    assert outcome.exit_code == 1 and "Error: no run 'nope'" in outcome.output


def test_a_round_without_patches_ends_on_the_unchanged_skill(workspace):
    def failing_agent(messages, options):
        if messages[0]["content"].startswith("You are a spreadsheet agent"):
            return {"thought": "give up", "section": "", "tool": "finish", "args": {"summary": "-"}}
        return reply(messages, options)

    # Every rollout fails and only success analysts run: no patch at all.
    result = evolve(config_for(workspace, rounds=2, analysts="success"), progress=False,
                    model_source=ScriptedSource([failing_agent]))
    repo = SkillsRepo.open(workspace / "skills_repo")
    main_sha = repo.resolve("main")
    for state in result.rounds:
        assert state.patches == 0 and state.finished
        assert state.result_commit == state.base_commit == main_sha
        assert repo.resolve(f"t2s/{state.run_id}/result") == main_sha
        assert "quality gate" in state.notes[0]
        assert state.scores["result"]["soft"] == 0.0


@pytest.mark.model
def test_one_real_round_with_the_embedded_model(tmp_path, embedded_model_path):
    """The whole loop on the embedded model: 2 bundled tasks to evolve on, 2 held out, tiny budgets."""
    SkillsRepo.init(tmp_path / "skills_repo")
    config = Config(tasks="bundled", model=str(embedded_model_path), rounds=1, workers=2,
                    limit=2, turns=1, max_tokens=64, timeout=900, analysts="error",
                    repo=str(tmp_path / "skills_repo"), runs_dir=str(tmp_path / "runs"),
                    run_id="real")
    result = evolve(config, progress=False)
    state = result.rounds[0]
    assert state.done == ["rollout", "analysis", "merge", "eval"]
    run_dir = tmp_path / "runs" / "real" / "round-1"
    trajectories = list((run_dir / "trajectories").glob("*.json"))
    assert len(trajectories) == 2
    from t2s.trajectory import Trajectory

    trajectory = Trajectory.load(trajectories[0])
    assert trajectory.model.startswith("SmolLM2") and trajectory.steps
    assert trajectory.tokens["completion"] > 0
    assert len(list((run_dir / "analysis").glob("*.json"))) == 2
    repo = SkillsRepo.open(tmp_path / "skills_repo")
    assert repo.resolve(state.result_ref) == state.result_commit
    assert set(state.scores) == {"base", "result"}
    assert Path(result.files["plot"]).read_bytes()[:4] == b"\x89PNG"
