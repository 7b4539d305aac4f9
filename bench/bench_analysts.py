"""How fast the analysis stage runs, and how often error analysts reach a checked fix.

Rolls out a few bundled tasks with the embedded model (the rollout code, starter skill in a
fresh skills repository), then analyses those trajectories with the combined analysts,
once with 1 worker and once with 2, each time from scratch. Measures
- analyses per minute (wall clock of `run_analysis`, pool start-up included),
- the share of error analyses that reach a fix passing the checker (the quality gate),
- outcomes: patch branches, rejected, dropped, errors.

Run: .venv/bin/python bench/bench_analysts.py [--tasks N] [--turns N] [--max-tokens N]
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from t2s.agent import AgentBudget
from t2s.analysts import run_analysis
from t2s.embedded import EMBEDDED_MODEL_FILE, models_dir
from t2s.errors import TaskError
from t2s.models import LlamaSource
from t2s.repo import SkillsRepo
from t2s.rollout import run_rollouts
from t2s.tasks import load_suite


def bench(task_count: int, turns: int, max_tokens: int) -> None:
    try:
        suite = load_suite("bundled")
    except TaskError:
        print("Analysts: skipped, the bundled suite is missing (python -m t2s.suitegen)")
        return
    model_path = models_dir() / EMBEDDED_MODEL_FILE
    if not model_path.is_file():
        print(f"Analysts: skipped, {model_path} is missing (make model)")
        return
    source = LlamaSource(str(model_path))
    # Spread over kinds of work: every k-th task of the suite.
    step = max(1, len(suite.tasks) // task_count)
    tasks = suite.tasks[::step][:task_count]
    with tempfile.TemporaryDirectory(prefix="t2s-bench-analysts-") as temporary:
        root = Path(temporary)
        repo = SkillsRepo.init(root / "skills_repo")
        base = repo.resolve("main")
        started = time.perf_counter()
        rollout = run_rollouts(
            root / "rollout",
            tasks,
            repo.read_skill(base),
            "main",
            base,
            source,
            workers=2,
            budget=AgentBudget(turns=2, max_tokens=128),
            progress=False,
        )
        print(
            f"Trajectories: {rollout.tasks} bundled tasks rolled out with {model_path.name} in "
            f"{time.perf_counter() - started:.0f}s ({rollout.solved} solved)"
        )
        print(
            f"Analysis: combined analysts, error analysts {turns} turns, {max_tokens} tokens "
            "per reply"
        )
        print("  workers  analyses/min  error analyses fixed  branches  rejected  dropped  errors")
        for workers in (1, 2):
            run_dir = _copy_run(root / "rollout", root / f"analysis-{workers}", f"bench-w{workers}")
            started = time.perf_counter()
            summary = run_analysis(
                run_dir,
                repo,
                model=source,
                workers=workers,
                turns=turns,
                max_tokens=max_tokens,
                progress=False,
            )
            wall = time.perf_counter() - started
            errors = [r for r in summary.records if r.analyst == "error"]
            fixed = sum(1 for r in errors if r.fixed)
            share = f"{fixed}/{len(errors)} ({fixed / len(errors):.0%})" if errors else "n/a"
            print(
                f"  {workers:>7}  {60 * summary.analysed / wall:12.2f}  {share:>20}  "
                f"{summary.count('branch'):>8}  {summary.count('rejected'):>8}  "
                f"{summary.count('dropped'):>7}  {summary.count('error'):>6}"
            )
            for (status, kind), count in sorted(summary.reasons().items()):
                print(f"           {count:>3} {status}/{kind}")


def _copy_run(source: Path, target: Path, run_id: str) -> Path:
    """The rollout's run under a new id, so each measurement starts with nothing analysed."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("analysis"))
    info = json.loads((target / "run.json").read_text())
    info["run_id"] = run_id
    (target / "run.json").write_text(json.dumps(info))
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=192)
    options = parser.parse_args(argv or [])  # run_all.py calls main() with no arguments
    bench(options.tasks, options.turns, options.max_tokens)


if __name__ == "__main__":
    main(sys.argv[1:])
