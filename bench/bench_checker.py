"""How fast tasks load and the checker judges, on the shared SpreadsheetBench-Verified sample.

Checks: every one of the sample's 106 tasks loads; gold checked against itself passes for every
task; the untouched input checked against gold fails for most; formula evaluation time on a
small workbook (the `formulas` engine, and LibreOffice when it is installed). Also the bundled
suite: load time and gold-vs-gold for all its tasks.

Run: .venv/bin/python bench/bench_checker.py [SUITE_DIR] [--formula-answers]

--formula-answers also re-saves every gold workbook of the sample with openpyxl (which drops
formula results) and checks it, so each formula answer is judged by evaluation alone; that
takes several minutes without LibreOffice.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import openpyxl

from t2s.checker import check_task, libreoffice_binary
from t2s.tasks import CELL_LEVEL, Task, TestCase, load_suite

SAMPLE = Path("/work/shared/data/spreadsheetbench-verified-dev")
EXPECTED_TASKS = 106


def timed_checks(tasks, pick):
    """Check every task with the workbook `pick(case)` as output; (results, seconds per task)."""
    results, seconds = [], []
    for task in tasks:
        start = time.perf_counter()
        results.append(check_task(task, {case.name: pick(case) for case in task.cases}))
        seconds.append(time.perf_counter() - start)
    return results, seconds


def describe_times(seconds) -> str:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (
        f"mean {1000 * statistics.mean(seconds):6.1f} ms  median "
        f"{1000 * statistics.median(seconds):6.1f} ms  p95 {1000 * p95:6.1f} ms  "
        f"max {1000 * max(seconds):7.1f} ms"
    )


def bench_suite(label: str, path, expected: int | None) -> bool:
    start = time.perf_counter()
    suite = load_suite(path)
    loaded = time.perf_counter() - start
    count = len(suite.tasks)
    cases = sum(len(task.cases) for task in suite.tasks)
    verdict = "ok" if expected is None or count == expected else f"EXPECTED {expected}"
    print(f"{label}: loaded {count} tasks ({cases} cases) in {1000 * loaded:.0f} ms  {verdict}")
    ok = expected is None or count == expected

    gold, seconds = timed_checks(suite.tasks, lambda case: case.answer_path)
    failed = [task.id for task, result in zip(suite.tasks, gold) if not result.hard]
    print(
        f"  gold vs gold:  {len(gold) - len(failed)}/{len(gold)} pass  {describe_times(seconds)}"
        + (f"  FAILED: {', '.join(failed)}" if failed else "  ok")
    )
    ok = ok and not failed

    untouched, seconds = timed_checks(suite.tasks, lambda case: case.input_path)
    passing = [task.id for task, result in zip(suite.tasks, untouched) if result.hard]
    share = len(passing) / len(untouched)
    verdict = "ok (most fail)" if share < 0.1 else "TOO MANY PASS"
    print(
        f"  input vs gold: {len(passing)}/{len(untouched)} pass  {describe_times(seconds)}  "
        f"{verdict}" + (f"  passing: {', '.join(passing)}" if passing else "")
    )
    judges: dict[str, int] = {}
    for result in gold + untouched:
        judges[result.judge] = judges.get(result.judge, 0) + 1
    print(f"  judges: {judges}")
    return ok and share < 0.1


def bench_formulas() -> None:
    """A 40-row workbook with formulas and no cached values, as an agent's openpyxl output is."""
    with tempfile.TemporaryDirectory(prefix="t2s-bench-checker-") as scratch:
        scratch = Path(scratch)
        gold, output = openpyxl.Workbook(), openpyxl.Workbook()
        rows = 40
        for row in range(1, rows + 1):
            for book in (gold, output):
                book.active.cell(row, 1, row)
                book.active.cell(row, 2, row * 1.5)
            gold.active.cell(row, 3, row * 2.5)
            output.active.cell(row, 3, f"=A{row}+B{row}")
        gold.active.cell(rows + 1, 3, sum(row * 2.5 for row in range(1, rows + 1)))
        output.active.cell(rows + 1, 3, f"=SUM(C1:C{rows})")
        gold.save(scratch / "gold.xlsx")
        output.save(scratch / "output.xlsx")
        case = TestCase("1", scratch / "input.xlsx", scratch / "gold.xlsx")
        task = Task("formulas", "sum", CELL_LEVEL, f"C1:C{rows + 1}", None, None, "bench", (case,))
        engines = ["formulas"] + (["libreoffice"] if libreoffice_binary() else [])
        for engine in engines:
            start = time.perf_counter()
            result = check_task(task, {"1": scratch / "output.xlsx"}, engine=engine)
            seconds = time.perf_counter() - start
            verdict = "ok" if result.hard and result.judge == engine else "WRONG RESULT"
            print(f"  {engine:<11} {rows + 1} formula cells: {1000 * seconds:7.0f} ms  {verdict}")
        if not libreoffice_binary():
            print("  libreoffice not installed: skipped")


def bench_formula_answers(path) -> None:
    """Gold workbooks re-saved by openpyxl lose their cached results, exactly like an agent's
    output: every task whose answer holds formulas must then pass by evaluation alone."""
    suite = load_suite(path)
    outcomes: dict[str, list[str]] = {"pass": [], "fail": [], "values": []}
    seconds = []
    with tempfile.TemporaryDirectory(prefix="t2s-bench-resaved-") as scratch:
        for task in suite.tasks:
            case = task.cases[0]
            resaved = Path(scratch) / f"{task.id}.xlsx"
            openpyxl.load_workbook(case.answer_path).save(resaved)
            start = time.perf_counter()
            result = check_task(task, {case.name: resaved})
            if result.judge == "values":
                outcomes["values"].append(task.id)
                continue
            seconds.append(time.perf_counter() - start)
            outcomes["pass" if result.hard else "fail"].append(task.id)
            if not result.hard:
                first = result.cases[0].mismatches[:1]
                reason = first[0].describe() if first else result.cases[0].error
                print(f"    {task.id}: {str(reason)[:150]}")
    evaluated = len(outcomes["pass"]) + len(outcomes["fail"])
    print(
        f"  gold re-saved by openpyxl, judged by evaluation: {len(outcomes['pass'])}/{evaluated} "
        f"pass ({len(outcomes['values'])} tasks have no formulas in the answer)  "
        + (describe_times(seconds) if seconds else "")
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    formula_answers = "--formula-answers" in args
    if formula_answers:
        args.remove("--formula-answers")
    sample = Path(args[0]) if args else SAMPLE
    ok = True
    if (sample / "dataset.json").is_file():
        expected = EXPECTED_TASKS if sample == SAMPLE else None
        ok = bench_suite(f"SpreadsheetBench sample {sample}", sample, expected)
    else:
        print(f"{sample} not found: skipping the SpreadsheetBench sample")
    ok = bench_suite("bundled suite", "bundled", None) and ok
    print("Formula evaluation (output written by openpyxl, no cached values):")
    bench_formulas()
    if formula_answers and (sample / "dataset.json").is_file():
        bench_formula_answers(sample)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
