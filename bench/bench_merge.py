"""Wall time of the rules-and-git part of consolidation, and how it grows with the number of patches.

Synthetic patches against the starter skill: two in five restate one of 24 common lessons (so
support builds up), the rest bring a lesson of their own, one in eight also competes to replace
a line of the skill. The merge operator is left out (`model=None`): what is timed is git's
merges, the merge driver's rules, support bookkeeping, shaping and the commits.

Target (issue 6): 1,024 patches in under 60 s on this machine, growing no faster than P log P.

Run: .venv/bin/python bench/bench_merge.py [P ...]   (default: 128 1024)
"""

import math
import os
import sys
import tempfile
import time
from pathlib import Path

from t2s.consolidate import consolidate
from t2s.patch import Edit, Patch, apply_patch
from t2s.repo import PatchBranch, PatchCommit, SkillsRepo

TARGET_SECONDS = 60.0
TARGET_PATCHES = 1024
WORKERS = os.cpu_count() or 1


def synthetic_edits(skill, n: int) -> list[Edit]:
    sections = [section.title for section in skill.sections() if section.level == 2]
    section = sections[n % len(sections)]
    if n % 5 < 2:
        lesson = f"- Common lesson {n % 24}: check the answer range before writing."
    else:
        lesson = f"- Lesson of patch {n}: this task's workbook had a quirk worth noting."
    edits = [Edit("append_to_section", "SKILL.md", section, "", "", lesson)]
    if n % 8 == 0:
        target = "5. Stop when the answer cells hold what the instruction asks; do not keep polishing."
        edits.append(Edit("replace_in_section", "SKILL.md", "Workflow", "", target,
                          target + f" (variant {n % 3})"))
    return edits


def make_run(repo: SkillsRepo, run_id: str, count: int) -> None:
    base = repo.resolve("main")
    skill = repo.read_skill(base)
    items = []
    for n in range(count):
        applied = apply_patch(skill, Patch("synthetic", ["lesson"], synthetic_edits(skill, n)))
        commit = PatchCommit(lesson=f"synthetic lesson {n}", run=run_id, task=f"task-{n}")
        items.append(PatchBranch(run_id, n, base, applied.skill, commit))
    repo.create_patch_branches(items)


def measure(count: int, root: Path) -> dict:
    repo = SkillsRepo.init(root / f"repo-{count}")
    make_run(repo, "bench", count)
    before = os.times()
    started = time.perf_counter()
    result = consolidate(repo, "bench", model=None, batch=32, progress=False, workers=WORKERS,
                         run_dir=root / f"runs-{count}")
    seconds = time.perf_counter() - started
    after = os.times()
    cpu = (after.user + after.system + after.children_user + after.children_system) - (
        before.user + before.system + before.children_user + before.children_system)
    return {
        "patches": count, "seconds": seconds, "cpu": cpu, "levels": result.levels,
        "nodes": len(result.nodes), "kept": len(result.kept), "dropped": len(result.dropped),
    }


def main(sizes: list[int] | None = None) -> list[dict]:
    sizes = sizes or [128, TARGET_PATCHES]
    rows = []
    print(f"bench_merge: rules-only consolidation, batch 32, {WORKERS} worker(s), "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'patches':>8} {'levels':>6} {'nodes':>5} {'wall s':>8} {'cpu s':>8} "
          f"{'ms/P':>7} {'ms/(P log2 P)':>13} {'kept':>5} {'dropped':>7}")
    with tempfile.TemporaryDirectory(prefix="t2s-bench-merge-") as scratch:
        for count in sizes:
            row = measure(count, Path(scratch))
            rows.append(row)
            per_p = 1000 * row["seconds"] / count
            per_plogp = 1000 * row["seconds"] / (count * max(1.0, math.log2(count)))
            print(f"{count:>8} {row['levels']:>6} {row['nodes']:>5} {row['seconds']:>8.1f} "
                  f"{row['cpu']:>8.1f} {per_p:>7.1f} {per_plogp:>13.2f} {row['kept']:>5} "
                  f"{row['dropped']:>7}")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        ratio = last["seconds"] / first["seconds"]
        p_ratio = last["patches"] / first["patches"]
        plogp_ratio = p_ratio * math.log2(last["patches"]) / math.log2(first["patches"])
        print(f"growth {first['patches']} -> {last['patches']}: time x{ratio:.1f} "
              f"(P x{p_ratio:.0f}, P log P x{plogp_ratio:.1f})")
    target = next((row for row in rows if row["patches"] == TARGET_PATCHES), None)
    if target is not None:
        verdict = "meets" if target["seconds"] < TARGET_SECONDS else "MISSES"
        print(f"{TARGET_PATCHES} patches in {target['seconds']:.1f} s: {verdict} the "
              f"{TARGET_SECONDS:.0f} s target")
    return rows


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or None)
