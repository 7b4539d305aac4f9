"""How fast patches become branches in the skills repository, and how big it grows.

Target (issue 4): under 20 ms per patch for 1,000 patches on this machine.

Run: .venv/bin/python bench/bench_repo.py
"""

import os
import subprocess
import tempfile
import time
from pathlib import Path

from t2s.repo import PatchBranch, PatchCommit, SkillsRepo

TARGET_MS = 20.0


def patched_skills(skill, count: int, tag: str):
    """Distinct patched skills: every one edits SKILL.md, one in four also adds a reference."""
    text = skill.files["SKILL.md"]
    for n in range(count):
        patched = skill.with_file("SKILL.md", text + f"\n- Lesson {tag}-{n}: check the totals.\n")
        if n % 4 == 0:
            patched = patched.with_file(f"references/case-{tag}-{n}.md", f"# Case {n}\n\nDetail.\n")
        yield patched


def commit_for(tag: str, n: int) -> PatchCommit:
    return PatchCommit(
        lesson=f"Lesson {tag}-{n}: check the totals after writing formulas",
        reasoning="The agent wrote a SUM formula and never evaluated it; the checker saw None.",
        run=tag, task=f"task-{n}", trajectory=f"trajectories/task-{n}.json", outcome="failure",
        analyst="error", model="SmolLM2-135M-Instruct.Q4_1",
        note=f"task-{n}: wrote =SUM(B2:B9) without a cached value; fixed by computing in Python.",
    )


def directory_kib(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) // 1024


def report(label: str, count: int, seconds: float) -> float:
    per = 1000 * seconds / count
    verdict = "ok" if per < TARGET_MS else f"OVER the {TARGET_MS:.0f} ms target"
    print(f"  {label:<34} {count:>5} patches  {seconds:6.2f} s  {per:6.2f} ms/patch  {verdict}")
    return per


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="t2s-bench-repo-") as temporary:
        os.environ.setdefault("GIT_AUTHOR_NAME", "t2s bench")
        os.environ.setdefault("GIT_AUTHOR_EMAIL", "bench@example.invalid")
        os.environ.setdefault("GIT_COMMITTER_NAME", "t2s bench")
        os.environ.setdefault("GIT_COMMITTER_EMAIL", "bench@example.invalid")
        repo = SkillsRepo.init(Path(temporary) / "skills_repo")
        base = repo.resolve("main")
        skill = repo.read_skill("main")
        print("Patch branches (t2s/<run>/patch/<n>), one commit + note each, starter skill:")

        for count in (100, 500, 1000):
            tag = f"batch{count}"
            items = [PatchBranch(tag, n, base, patched, commit_for(tag, n))
                     for n, patched in enumerate(patched_skills(skill, count, tag))]
            start = time.perf_counter()
            with repo.lock():
                repo.create_patch_branches(items)
            report(f"batch of {count} (one transaction)", count, time.perf_counter() - start)

        count = 100
        tag = "single"
        patched = list(patched_skills(skill, count, tag))
        start = time.perf_counter()
        with repo.lock():
            for n, one in enumerate(patched):
                repo.create_patch_branch(tag, n, base, one, commit_for(tag, n))
        report(f"one call per patch ({count})", count, time.perf_counter() - start)

        start = time.perf_counter()
        items = [PatchBranch("batch1000", n, base, one, commit_for("batch1000", n))
                 for n, one in enumerate(patched_skills(skill, 1000, "batch1000"))]
        repo.create_patch_branches(items)
        report("re-run of 1000 (idempotent)", 1000, time.perf_counter() - start)

        fresh = SkillsRepo.open(repo.path)  # nothing cached
        shas = list(fresh.branches("t2s/batch500/").values())
        start = time.perf_counter()
        for sha in shas:
            fresh.read_skill(sha)
        seconds = time.perf_counter() - start
        print(f"  {'read_skill of each (no checkout)':<34} {len(shas):>5} skills    "
              f"{seconds:6.2f} s  {1000 * seconds / len(shas):6.2f} ms/skill")

        branches = len(repo.branches("t2s/"))
        git_dir = repo.git_dir
        print(f"\nRepository after {branches} patch branches:")
        print(f"  .git on disk: {directory_kib(git_dir) / 1024:.1f} MiB (loose objects, refs, reflogs)")
        start = time.perf_counter()
        subprocess.run(["git", "-C", str(repo.path), "gc", "--quiet"], check=True)
        print(f"  after git gc:  {directory_kib(git_dir) / 1024:.1f} MiB "
              f"(gc took {time.perf_counter() - start:.1f} s)")
        fsck = subprocess.run(["git", "-C", str(repo.path), "fsck", "--strict", "--no-dangling"],
                              check=False, capture_output=True, text=True)
        print(f"  git fsck: {'clean' if fsck.returncode == 0 and not fsck.stdout else fsck.stdout}")


if __name__ == "__main__":
    main()
