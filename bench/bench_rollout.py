"""How fast the rollout stage runs: sandbox start-up, and rollouts with the embedded model.

Measures
- sandbox runs per second (an empty script, and one that imports openpyxl and opens a workbook),
- rollouts per minute and completion tokens per second over a few bundled tasks with the
  embedded model, with 1 and 2 workers,
- the share of rollout time spent outside the model (tools, replay, checker, I/O).
  Target (issue 3): under 15%.

Run: .venv/bin/python bench/bench_rollout.py [--tasks N] [--turns N]
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from t2s.agent import AgentBudget
from t2s.embedded import EMBEDDED_MODEL_FILE, models_dir
from t2s.errors import TaskError
from t2s.models import LlamaSource
from t2s.rollout import run_rollouts
from t2s.sandbox import SandboxLimits, run_python
from t2s.skill import Skill
from t2s.tasks import load_suite

OUTSIDE_TARGET = 0.15
STARTER_SKILL = Path(__file__).resolve().parent.parent / "t2s" / "starter_skill"


def bench_sandbox(runs: int) -> None:
    print("Sandbox start-up (fresh interpreter, limits, own session; own uid when root):")
    with tempfile.TemporaryDirectory(prefix="t2s-bench-sandbox-") as temporary:
        workdir = Path(temporary)
        suite = _bundled()
        if suite is not None:
            shutil.copyfile(suite.tasks[0].cases[0].input_path, workdir / "workbook.xlsx")
        scripts = [("empty script", "pass")]
        if suite is not None:
            scripts.append(
                (
                    "openpyxl: load + save workbook",
                    (
                        "import openpyxl\n"
                        "wb = openpyxl.load_workbook('workbook.xlsx')\n"
                        "wb.save('workbook.xlsx')"
                    ),
                )
            )
        for label, code in scripts:
            run_python(code, workdir, SandboxLimits())  # warm the file cache
            started = time.perf_counter()
            for _ in range(runs):
                result = run_python(code, workdir, SandboxLimits())
                if not result.ok:
                    print(f"  {label}: failed ({result.reason})")
                    break
            seconds = time.perf_counter() - started
            print(
                f"  {label:<32} {runs:>3} runs  {runs / seconds:6.1f} runs/s  "
                f"{1000 * seconds / runs:7.1f} ms/run"
            )


def bench_rollouts(task_count: int, turns: int, max_tokens: int) -> None:
    suite = _bundled()
    model_path = models_dir() / EMBEDDED_MODEL_FILE
    if suite is None:
        print("Rollouts: skipped, the bundled suite is missing (python -m t2s.suitegen)")
        return
    if not model_path.is_file():
        print(f"Rollouts: skipped, {model_path} is missing (make model)")
        return
    tasks = suite.tasks[:task_count]
    skill = Skill.from_dir(STARTER_SKILL)
    budget = AgentBudget(turns=turns, max_tokens=max_tokens)
    print(
        f"\nRollouts with {model_path.name}: {len(tasks)} bundled tasks, starter skill, "
        f"{turns} turns, {max_tokens} tokens per reply"
    )
    print("  workers  parallel  rollouts/min  completion tok/s  in model  outside model  solved")
    for workers, parallel in ((1, 1), (2, 1), (2, 2), (2, 4)):
        with tempfile.TemporaryDirectory(prefix="t2s-bench-rollout-") as temporary:
            started = time.perf_counter()
            summary = run_rollouts(
                Path(temporary) / "run",
                tasks,
                skill,
                "starter",
                "",
                LlamaSource(str(model_path)),
                workers=workers,
                parallel=parallel,
                budget=budget,
                progress=False,
            )
            wall = time.perf_counter() - started
        rate = 60 * summary.ran / wall
        tokens_per_second = summary.tokens["completion"] / wall
        outside = summary.outside_model_share
        verdict = "ok" if outside < OUTSIDE_TARGET else f"OVER the {OUTSIDE_TARGET:.0%} target"
        print(
            f"  {workers:>7}  {parallel:>8}  {rate:12.2f}  {tokens_per_second:16.1f}  "
            f"{summary.model_seconds:7.0f}s  {outside:12.1%}  {summary.solved:>3}/{summary.tasks}"
            f"   {verdict}"
        )
    print(
        "  (outside model = 1 - model time / rollout time, summed over rollouts; model time "
        "includes prompt evaluation and grammar-constrained sampling)"
    )


def _bundled():
    try:
        return load_suite("bundled")
    except TaskError:
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandbox-runs", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=192)
    options = parser.parse_args(argv or [])  # run_all.py calls main() with no arguments
    bench_sandbox(options.sandbox_runs)
    bench_rollouts(options.tasks, options.turns, options.max_tokens)


if __name__ == "__main__":
    main(sys.argv[1:])
