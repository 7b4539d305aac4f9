"""Run every `bench/bench_*.py` that has a `main()`, in name order, each under a header.

python bench/run_all.py            # all of them
python bench/run_all.py models     # only those whose name contains "models"
"""

from __future__ import annotations

import importlib.util
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def benchmarks(name_filter: str | None) -> list[Path]:
    found = sorted(BENCH_DIR.glob("bench_*.py"))
    return [path for path in found if name_filter is None or name_filter in path.stem]


def run(path: Path) -> None:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entry = getattr(module, "main", None)
    if entry is None:
        print(f"(skipped: {path.name} has no main())")
        return
    entry()


def main(argv: list[str]) -> int:
    name_filter = argv[0] if argv else None
    paths = benchmarks(name_filter)
    if not paths:
        print(f"no benchmark in {BENCH_DIR} matches {name_filter!r}", file=sys.stderr)
        return 1
    sys.path.insert(0, str(BENCH_DIR.parent))  # the project, when t2s is not installed
    failed = []
    for path in paths:
        print(f"\n=== {path.stem} {'=' * max(0, 66 - len(path.stem))}", flush=True)
        started = time.perf_counter()
        try:
            run(path)
        except SystemExit as error:
            if error.code not in (None, 0):
                print(f"{path.stem} stopped: {error.code}", file=sys.stderr)
                failed.append(path.stem)
        except Exception:  # noqa: BLE001 - one broken benchmark must not stop the others
            traceback.print_exc()
            failed.append(path.stem)
        print(f"--- {path.stem} took {time.perf_counter() - started:.0f}s", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
