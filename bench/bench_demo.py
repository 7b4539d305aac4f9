"""Wall time of one demo-sized evolve round, by stage, so the slowest stage is visible.

Runs exactly what `make demo` runs for its evolve round (t2s.demo.DEMO_OPTIONS: the bundled
suite, the embedded model, 2 workers, a few tasks per split), plus the no-skill column of the
demo's evaluation, in a temporary directory.

Run: .venv/bin/python bench/bench_demo.py
"""

import os
import resource
import tempfile
import time
from pathlib import Path

from t2s.config import Config
from t2s.demo import DEMO_OPTIONS
from t2s.evaluate import NO_SKILL, SkillSpec, agent_budget, evaluate, measurement_dir
from t2s.evolve import evolve
from t2s.models import resolve_model
from t2s.repo import SkillsRepo
from t2s.tasks import load_suite, split_tasks

STAGE_NAMES = {"rollout": "rollout (train split)", "analysis": "analysis",
               "merge": "merge (consolidation)", "eval": "eval (base, result)"}


def main() -> None:
    cpu_before = _cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="t2s-bench-demo-") as scratch:
        root = Path(scratch)
        SkillsRepo.init(root / "skills_repo")
        config = Config(**DEMO_OPTIONS, rounds=1, repo=str(root / "skills_repo"),
                        runs_dir=str(root / "runs"), run_id="bench")
        started = time.monotonic()
        result = evolve(config, progress=False, log=lambda line: None)
        round_seconds = time.monotonic() - started
        seconds = dict(result.rounds[0].seconds)

        # The demo's `t2s eval` only adds the no-skill column: the others are shared.
        suite = load_suite(config.tasks)
        test = split_tasks(suite.tasks, "test", config.split_ratio)[: config.limit]
        model = resolve_model(config.model)
        started = time.monotonic()
        evaluate(test, [SkillSpec(NO_SKILL)], model=model, workers=config.workers,
                 out_dir=root / "eval", columns_dir=measurement_dir(config, suite, test, model),
                 budget=agent_budget(config), timeout=config.timeout, suite=suite.name,
                 progress=False)
        no_skill = time.monotonic() - started
    cpu = _cpu_seconds() - cpu_before

    rows = [(STAGE_NAMES[stage], seconds[stage]) for stage in STAGE_NAMES if stage in seconds]
    rows.append(("eval (no skill column)", no_skill))
    total = round_seconds + no_skill
    tasks = config.limit
    print(f"One demo round: {tasks} train + {tasks} test bundled tasks, {config.workers} workers, "
          f"{config.turns} turns, {config.max_tokens} tokens/reply, model {config.model}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'stage':<26}{'seconds':>9}{'share':>8}")
    for name, value in rows:
        print(f"{name:<26}{value:>9.1f}{value / total:>8.0%}")
    print(f"{'total':<26}{total:>9.1f}")
    # Wall time depends on what else runs; CPU time does not. With the cores to itself, the
    # round takes about its CPU time divided by the cores the workers keep busy.
    cores = min(config.workers, os.cpu_count() or 1)
    print(f"CPU time: {cpu:.0f}s (this process and its workers); on an otherwise idle machine "
          f"about {cpu / cores / 60:.1f} min of wall time with {cores} busy cores. "
          f"Load average now: {os.getloadavg()[0]:.1f}")
    slowest = max(rows, key=lambda row: row[1])
    print(f"Slowest stage: {slowest[0]} ({slowest[1]:.0f}s); patches this round: "
          f"{result.rounds[0].patches}. The demo's 20-minute budget: "
          f"{'met' if total < 20 * 60 else 'NOT met'} by this round ({total / 60:.1f} min).")


def _cpu_seconds() -> float:
    """User + system CPU of this process and of every finished child (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
