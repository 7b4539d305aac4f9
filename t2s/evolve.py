"""`t2s evolve`: rounds of rollout -> analysis -> consolidation -> held-out evaluation.

Everything a run does lives in `<runs>/<evolve-id>/` and in the skills repository:

    <runs>/<evolve-id>/evolve.json        options, and which stage of which round is done
    <runs>/<evolve-id>/round-<k>/         the round's rollout run (trajectories, analysis, merge)
    <runs>/<evolve-id>/round-<k>/eval/    the round's held-out report (base vs result)
    <runs>/eval-columns/<key>/<commit>/   held-out rollouts, one per skill commit, shared
                                          with `t2s eval` on the same tasks, model and budgets
    <runs>/<evolve-id>/rounds.{md,json,png}   held-out score after each round

Round k's branches in the skills repository are `t2s/<evolve-id>-r<k>/...`; its result branch is
`t2s/<evolve-id>-r<k>/result`. Round k+1 starts from round k's result (or from main when
`accept` moved main there).

Which run a command continues: `run_id` names it explicitly. Without it, the most recent run
under `<runs>` that was started with the same options (everything but rounds, workers,
parallel and timeout) and has fewer finished rounds than asked is continued; otherwise a new
run starts, named `evolve-<UTC date>-<time>`. So running the same command again after a crash
or Ctrl-C continues it, and asking for more rounds extends a finished run.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from t2s.config import Config
from t2s.errors import ConfigError, RunError
from t2s.evaluate import (
    EvalReport,
    SkillSpec,
    agent_budget,
    evaluate,
    limit_tasks,
    measurement_dir,
)
from t2s.fsutil import atomic_write_json, atomic_write_text, read_json
from t2s.report import Table, plot_lines, render_markdown, render_text

STATE_FILE = "evolve.json"
STAGES = ("rollout", "analysis", "merge", "accept", "eval")
# Options that do not change what a run computes, so a rerun with other values continues it.
_VOLATILE = ("rounds", "workers", "parallel", "timeout", "run_id", "skills", "no_skill", "ablate",
             "out", "split")


@dataclass
class RoundState:
    round: int
    run_id: str  # the round's name in the skills repository: t2s/<run_id>/...
    base_ref: str
    base_commit: str
    done: list[str] = field(default_factory=list)  # stages finished, in order
    patches: int = 0
    result_commit: str = ""  # the round's result; the base when no patch survived
    result_ref: str = ""
    scores: dict[str, dict] = field(default_factory=dict)  # "base" / "result" -> summary
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time

    @property
    def finished(self) -> bool:
        return "eval" in self.done


@dataclass
class EvolveState:
    evolve_id: str
    fingerprint: str
    options: dict
    created: str
    rounds: list[RoundState] = field(default_factory=list)

    def finished_rounds(self) -> int:
        return sum(1 for r in self.rounds if r.finished)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EvolveState:
        return cls(
            evolve_id=data["evolve_id"],
            fingerprint=data["fingerprint"],
            options=dict(data["options"]),
            created=data["created"],
            rounds=[RoundState(**r) for r in data.get("rounds", [])],
        )


@dataclass
class EvolveResult:
    evolve_id: str
    run_dir: Path
    rounds: list[RoundState]
    final_ref: str
    final_commit: str
    resumed: bool
    files: dict[str, str]

    def summary_table(self) -> Table:
        return rounds_table(self.rounds)


def evolve(
    config: Config,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    model_source=None,
) -> EvolveResult:
    """Run (or continue) `config.rounds` rounds; see the module docstring for where things go.

    `model_source` overrides `config.model` (tests pass a scripted source); `log` receives one
    line per stage (default: stderr when `progress`).
    """
    from t2s.models import resolve_model
    from t2s.repo import SkillsRepo
    from t2s.tasks import load_suite, split_tasks

    say = log or (_stderr if progress else (lambda line: None))
    suite = load_suite(config.tasks)
    train = limit_tasks(split_tasks(suite.tasks, "train", config.split_ratio), config.limit)
    test = limit_tasks(split_tasks(suite.tasks, "test", config.split_ratio), config.limit)
    if not train or not test:
        raise ConfigError(
            f"suite {suite.name!r} has {len(train)} train and {len(test)} test tasks at split "
            f"ratio {config.split_ratio}: evolving needs both; use a bigger suite or another ratio"
        )
    repo = SkillsRepo.open(config.repo)
    model = model_source if model_source is not None else resolve_model(config.model)
    runs_dir = Path(config.runs_dir)
    state, resumed = _open_state(config, runs_dir, repo)
    run_dir = runs_dir / state.evolve_id
    say(
        f"{'Continuing' if resumed else 'Starting'} evolve run {state.evolve_id} "
        f"({run_dir}): {len(train)} train / {len(test)} test tasks of {suite.name!r}, "
        f"model {model.name}, {config.rounds} round(s)"
    )
    stages = _Stages(config, model, repo, run_dir, train, test, suite, progress, say)
    for k in range(1, config.rounds + 1):
        if len(state.rounds) < k:
            base_ref, base_commit = _next_base(state, config, repo)
            state.rounds.append(
                RoundState(k, f"{state.evolve_id}-r{k}", base_ref, base_commit)
            )
            _save(run_dir, state)
        round_state = state.rounds[k - 1]
        if round_state.finished:
            say(f"round {k}: already done")
            continue
        stages.run_round(round_state, lambda: _save(run_dir, state))
    files = write_rounds_report(state, run_dir)
    last = state.rounds[config.rounds - 1]
    final_ref = "main" if config.accept else last.result_ref
    return EvolveResult(
        evolve_id=state.evolve_id,
        run_dir=run_dir,
        rounds=state.rounds[: config.rounds],
        final_ref=final_ref,
        final_commit=last.result_commit,
        resumed=resumed,
        files=files,
    )


class _Stages:
    """The five stages of a round; each one is resumable by itself."""

    def __init__(self, config, model, repo, run_dir, train, test, suite, progress, say):
        self.config = config
        self.model = model
        self.repo = repo
        self.run_dir = run_dir
        self.train = train
        self.test = test
        self.suite = suite
        self.progress = progress
        self.say = say

    def run_round(self, state: RoundState, save: Callable[[], None]) -> None:
        for stage in STAGES:
            if stage in state.done:
                continue
            if stage == "accept" and not self.config.accept:
                continue
            self.say(f"round {state.round}: {stage}")
            started = time.monotonic()
            getattr(self, stage)(state)
            state.seconds[stage] = round(time.monotonic() - started, 2)
            state.done.append(stage)
            save()

    def round_dir(self, state: RoundState) -> Path:
        return self.run_dir / f"round-{state.round}"

    def budget(self):
        return agent_budget(self.config)

    def rollout(self, state: RoundState) -> None:
        from t2s.rollout import run_rollouts

        run_rollouts(
            self.round_dir(state),
            self.train,
            skill=self.repo.read_skill(state.base_commit),
            skill_ref=state.base_ref,
            skill_commit=state.base_commit,
            model=self.model,
            workers=self.config.workers,
            parallel=self.config.parallel,
            budget=self.budget(),
            timeout=self.config.timeout,
            run_id=state.run_id,
            split="train",
            progress=self.progress,
        )

    def analysis(self, state: RoundState) -> None:
        from t2s.analysts import run_analysis

        run_analysis(
            self.round_dir(state),
            self.repo,
            analysts=self.config.analysts,
            model=self.model,
            workers=self.config.workers,
            parallel=self.config.parallel,
            turns=self.config.turns,
            timeout=self.config.timeout,
            progress=self.progress,
        )

    def merge(self, state: RoundState) -> None:
        from t2s.consolidate import consolidate
        from t2s.repo import result_branch_name

        patches = self.repo.branches(f"t2s/{state.run_id}/patch/")
        state.patches = len(patches)
        if not patches:
            # The round still ends on its result branch (the unchanged skill), so the next
            # round, `t2s eval` and people find every round's outcome under the same name.
            state.result_ref = result_branch_name(state.run_id)
            state.result_commit = state.base_commit
            with self.repo.lock():
                self.repo.update_refs({state.result_ref: state.base_commit})
            state.notes.append(
                "no patch survived the analysts' quality gate this round: the result is the "
                "unchanged skill"
            )
            return
        result = consolidate(
            self.repo,
            state.run_id,
            model=self.model,
            batch=self.config.batch,
            run_dir=self.round_dir(state),
            workers=self.config.workers,
            progress=self.progress,
        )
        state.result_ref, state.result_commit = result.result_ref, result.result_sha
        state.notes.append(
            f"{result.patches} patch(es) merged in {result.levels} level(s): "
            f"{len(result.kept)} lesson(s) kept, {len(result.dropped)} dropped"
        )
        state.notes.extend(result.notes)

    def accept(self, state: RoundState) -> None:
        from t2s.consolidate import accept

        if state.result_commit == state.base_commit:
            return
        accepted = accept(self.repo, state.run_id)
        state.notes.append(f"accepted: main moved to {accepted.result_sha[:12]}")

    def eval(self, state: RoundState) -> None:
        base = SkillSpec(
            f"round {state.round} base", state.base_ref, state.base_commit,
            self.repo.read_skill(state.base_commit),
        )
        result = SkillSpec(
            f"round {state.round} result", state.result_ref, state.result_commit,
            self.repo.read_skill(state.result_commit),
        )
        report: EvalReport = evaluate(
            self.test,
            [base] if result.commit == base.commit else [base, result],
            model=self.model,
            workers=self.config.workers,
            parallel=self.config.parallel,
            out_dir=self.round_dir(state) / "eval",
            columns_dir=measurement_dir(self.config, self.suite, self.test, self.model),
            budget=self.budget(),
            timeout=self.config.timeout,
            title=f"Round {state.round}: held-out evaluation",
            suite=self.suite.name,
            split="test",
            progress=self.progress,
        )
        state.scores = {"base": report.columns[0].summary()}
        state.scores["result"] = report.columns[-1].summary()


def write_rounds_report(state: EvolveState, run_dir: Path) -> dict[str, str]:
    """rounds.md / rounds.json / rounds.png: held-out score of the start skill and each result."""
    finished = [r for r in state.rounds if r.finished]
    files = {
        "markdown": str(run_dir / "rounds.md"),
        "json": str(run_dir / "rounds.json"),
        "plot": str(run_dir / "rounds.png"),
    }
    table = rounds_table(finished)
    atomic_write_text(files["markdown"], f"# Evolve run {state.evolve_id}\n\n" + render_markdown(table))
    atomic_write_json(files["json"], {"evolve_id": state.evolve_id, "rounds": [asdict(r) for r in finished]})
    if finished:
        xs = list(range(len(finished) + 1))
        soft = [finished[0].scores["base"]["soft"]] + [r.scores["result"]["soft"] for r in finished]
        hard = [finished[0].scores["base"]["hard"]] + [r.scores["result"]["hard"] for r in finished]
        plot_lines(xs, {"soft": soft, "hard": hard}, Path(files["plot"]),
                   title=f"{state.evolve_id}: held-out score after each round",
                   xlabel="round (0 = starting skill)", ylabel="score")
    else:
        files.pop("plot")
    return files


def rounds_table(rounds: list[RoundState]) -> Table:
    table = Table(["round", "patches", "base soft", "result soft", "delta", "base hard",
                   "result hard", "result branch"], title="Held-out score by round")
    for r in rounds:
        if not r.finished:
            table.add(r.round, r.patches, "-", "-", "-", "-", "-", f"(stopped after {', '.join(r.done) or 'nothing'})")
            continue
        base, result = r.scores["base"], r.scores["result"]
        table.add(
            r.round, r.patches, f"{base['soft']:.3f}", f"{result['soft']:.3f}",
            f"{result['soft'] - base['soft']:+.3f}", f"{base['hard']:.3f}", f"{result['hard']:.3f}",
            r.result_ref,
        )
    return table


def format_result(result: EvolveResult) -> str:
    return render_text(result.summary_table())


# -- the state file ---------------------------------------------------------------------------


def fingerprint(config: Config) -> tuple[str, dict]:
    options = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE}
    for key in ("repo", "runs_dir"):
        options[key] = str(Path(options[key]).resolve())
    if options["tasks"] != "bundled":
        options["tasks"] = str(Path(options["tasks"]).resolve())
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    return digest, options


def find_runs(runs_dir: Path) -> list[EvolveState]:
    """Every evolve run under `runs_dir`, oldest first."""
    states = []
    for path in sorted(Path(runs_dir).glob(f"*/{STATE_FILE}")):
        states.append(load_state(path.parent))
    return sorted(states, key=lambda s: s.created)


def load_state(run_dir: Path) -> EvolveState:
    path = Path(run_dir) / STATE_FILE
    try:
        return EvolveState.from_dict(read_json(path))
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not an evolve run (no {STATE_FILE})") from None
    except (ValueError, KeyError, TypeError) as error:
        raise RunError(f"{path} is damaged ({error}): move the run directory aside") from None


def _open_state(config: Config, runs_dir: Path, repo) -> tuple[EvolveState, bool]:
    digest, options = fingerprint(config)
    if config.run_id:
        if (runs_dir / config.run_id / STATE_FILE).is_file():
            state = load_state(runs_dir / config.run_id)
            if state.fingerprint != digest:
                changed = sorted(k for k in options if options[k] != state.options.get(k))
                raise ConfigError(
                    f"evolve run {config.run_id} was started with other options "
                    f"({', '.join(changed)}): use those, or another --run-id"
                )
            return state, True
        evolve_id = config.run_id
    else:
        for state in reversed(find_runs(runs_dir)):
            if state.fingerprint == digest and state.finished_rounds() < config.rounds:
                return state, True
        evolve_id = _new_id(runs_dir)
    if "/" in evolve_id or evolve_id.startswith(".") or not evolve_id.strip():
        raise ConfigError(f"bad run id {evolve_id!r}: use letters, digits, '-' and '_'")
    state = EvolveState(
        evolve_id=evolve_id,
        fingerprint=digest,
        options=options,
        created=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    )
    _save(runs_dir / evolve_id, state)
    return state, False


def _new_id(runs_dir: Path) -> str:
    stamp = datetime.now(timezone.utc).strftime("evolve-%Y%m%d-%H%M%S")
    candidate, n = stamp, 1
    while (runs_dir / candidate).exists():
        n += 1
        candidate = f"{stamp}-{n}"
    return candidate


def _next_base(state: EvolveState, config: Config, repo) -> tuple[str, str]:
    """Round 1 starts from `config.skill`; each later round from the previous round's result."""
    if not state.rounds:
        return config.skill, repo.resolve(config.skill)
    previous = state.rounds[-1]
    if config.accept:
        return "main", repo.resolve("main")
    return previous.result_ref, previous.result_commit


def _save(run_dir: Path, state: EvolveState) -> None:
    atomic_write_json(Path(run_dir) / STATE_FILE, state.to_dict())


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
