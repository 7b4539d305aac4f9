"""`make demo`: one round of skill evolution on the bundled suite, then a held-out comparison.

It runs the same `t2s` commands a person would type, shows each one and what it printed, and
ends by saying where to look. Everything it makes stays in the working directory:
`skills_repo/` (the skills repository) and `runs/` (run directories, reports, plots). Run it
again after Ctrl-C and it continues where it stopped; run it after it finished and it starts
a new evolve run on the same repository.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from t2s.embedded import EMBEDDED_MODEL_FILE, models_dir
from t2s.evolve import load_state

REPO = "skills_repo"
RUNS = "runs"
RUN_ID = "demo"  # a fixed id: `make demo` again continues or reuses this run
# Sized to finish well within 20 minutes on a 2-core machine with the embedded model: a few
# tasks per split, a short agent budget. `bench/bench_demo.py` measures one such round by stage.
DEMO_OPTIONS = {
    "tasks": "bundled",
    "model": "embedded",
    "workers": 2,
    "limit": 4,  # tasks of each split: 4 to evolve on, 4 held out
    "turns": 4,  # agent (and error-analyst) turns per task
    "max_tokens": 256,  # tokens per model reply
    "analysts": "error",
    "batch": 32,
}
# Measured on this 2-core machine (bench/bench_demo.py): 523 CPU-seconds, so about 5 minutes
# with the cores to itself; 10.6 minutes at load average 5 and 14.1 at load average 8-10.
# The error analysts take half of it.
EXPECTED_MINUTES = "5-10"
BIGGER_MODEL = "models/Qwen3-8B-Q4_K_M.gguf"


def t2s_command() -> str:
    """The `t2s` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("t2s")
    return str(script) if script.exists() else "t2s"


def run(arguments: list[str]) -> str:
    """Run `t2s ARGS`, echoing the command and streaming its output; stop the demo on failure."""
    print(f"\n$ t2s {shlex.join(arguments)}", flush=True)
    started = time.monotonic()
    process = subprocess.Popen([t2s_command(), *arguments], stdout=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    if process.wait() != 0:
        raise SystemExit(f"\nThe demo stopped: `t2s {arguments[0]}` failed (see above). "
                         "Fix the cause and run `make demo` again; finished work is kept.")
    print(f"[{time.monotonic() - started:.0f}s]", flush=True)
    return "".join(lines)


def options(names: list[str]) -> list[str]:
    args = []
    for name in names:
        args += [f"--{name.replace('_', '-')}", str(DEMO_OPTIONS[name])]
    return args


def main() -> int:
    started = time.monotonic()
    model = models_dir() / EMBEDDED_MODEL_FILE
    if not model.is_file():
        print(f"The embedded model {model} is missing: run `make model` (or `make demo`).")
        return 1
    print(
        "t2s demo: evolve a spreadsheet skill from execution traces, with a local model and git.\n"
        f"Model: {model.name} (135M parameters, embedded). Settings: {DEMO_OPTIONS['limit']} "
        f"bundled tasks to evolve on and {DEMO_OPTIONS['limit']} held out, "
        f"{DEMO_OPTIONS['workers']} workers, {DEMO_OPTIONS['turns']} turns and "
        f"{DEMO_OPTIONS['max_tokens']} tokens per reply: about {EXPECTED_MINUTES} minutes on an "
        "otherwise idle 2-core machine (chosen to stay well under 20 minutes even when it is "
        "busy).\n"
        "Plainly: a 135M model is far too small to solve these tasks or to fix its own failures, "
        "so expect low scores and few or no lessons. The demo shows the machinery working end "
        "to end; a real model is what makes the skill better (see the end)."
    )
    run(["init", REPO])
    run(["evolve", *options(["tasks", "model", "workers", "limit", "turns", "max_tokens",
                             "analysts", "batch"]), "--rounds", "1", "--run-id", RUN_ID,
         "--repo", REPO, "--runs-dir", RUNS])
    state = load_state(Path(RUNS) / RUN_ID)
    last = state.rounds[-1]
    result_ref = last.result_ref
    start = _name_of(last.base_commit)
    evaluation = run(["eval", *options(["tasks", "model", "workers", "limit", "turns",
                                        "max_tokens"]),
                      "--skill", result_ref, "--skill", start, "--no-skill",
                      "--repo", REPO, "--runs-dir", RUNS])
    report = _written(evaluation, "Markdown:")
    plot = _written(evaluation, "Plot:")
    minutes = (time.monotonic() - started) / 60
    changed = last.result_commit != last.base_commit
    print(f"\nDone in {minutes:.1f} minutes. Where to look:")
    print(f"  result branch   {result_ref} ({last.result_commit[:12]}): "
          + (f"{last.patches} patch(es) merged" if changed
             else "no lesson passed the quality gate, so it is the starting skill"))
    print(f"  history         git -C {REPO} log --graph --oneline --branches")
    print(f"  lessons by line t2s blame --ref {result_ref} --repo {REPO}")
    print(f"  patches         t2s log --repo {REPO}")
    print(f"  evolve report   {RUNS}/{state.evolve_id}/rounds.md (plot: rounds.png)")
    print(f"  eval report     {report}")
    print(f"  eval plot       {plot}")
    print(
        "\nWith a real model the same loop improves the skill. Put a GGUF under models/ and run:\n"
        f"  t2s evolve --tasks bundled --model {BIGGER_MODEL} --rounds 2 --workers 2\n"
        f"  t2s eval --tasks bundled --skill t2s/<run>-r2/result --skill main --no-skill "
        f"--model {BIGGER_MODEL}\n"
        "(or --model openai:http://HOST:8080/v1#NAME for an OpenAI-compatible server)."
    )
    return 0


def _name_of(commit: str) -> str:
    """`main` when main is still the starting skill, else the commit's short sha."""
    from t2s.repo import SkillsRepo

    return "main" if SkillsRepo.open(REPO).resolve("main") == commit else commit[:12]


def _written(output: str, label: str) -> str:
    for line in output.splitlines():
        if line.startswith(label):
            return line[len(label):].strip()
    return "(see the output above)"


if __name__ == "__main__":
    sys.exit(main())
