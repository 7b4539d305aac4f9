"""The skills repository: `t2s init`, `log`, `blame`, `show`, `diff`, `push`, `pull`, `clone`."""

from __future__ import annotations

import click

from t2s.cli import main
from t2s.repo import DEFAULT_PATH, MAIN, SKILL_FILE, BlameLine, CommitInfo, SkillsRepo

# Trailers `t2s log` summarises on one line, in this order; the rest are listed as they are.
_SUMMARY_TRAILERS = (
    ("T2S-Init", "initial skill:"),
    ("T2S-Run", "run"),
    ("T2S-Level", "level"),
    ("T2S-Node", "node"),
    ("T2S-Patches", "patches"),
    ("T2S-Support", "support"),
    ("T2S-Task", "task"),
    ("T2S-Trajectory", "trajectory"),
    ("T2S-Outcome", "outcome"),
    ("T2S-Analyst", "analyst"),
    ("T2S-Model", "model"),
)


def repo_option(function):
    return click.option(
        "--repo",
        "repo_path",
        default=DEFAULT_PATH,
        show_default=True,
        type=click.Path(file_okay=False),
        help="The skills repository.",
    )(function)


@main.command("init")
@click.argument("path", required=False, default=DEFAULT_PATH, type=click.Path(file_okay=False))
@click.option(
    "--from",
    "from_dir",
    type=click.Path(file_okay=False),
    help="Start from this human-written skill directory (deepening mode) instead of the starter.",
)
def init(path, from_dir):
    """Create a skills repository at PATH (default ./skills_repo) whose main holds one skill."""
    repo = SkillsRepo.init(path, from_dir=from_dir)
    info = repo.commit_info(MAIN)
    if not repo.created:
        click.echo(f"{repo.path} is already a t2s skills repository (main {info.sha[:7]}); "
                   "nothing changed.")
        return
    skill = repo.read_skill(MAIN)
    click.echo(f"Created skills repository {repo.path}")
    click.echo(f"  main {info.sha[:7]}  {info.subject}")
    click.echo(f"  skill {skill.name}: {', '.join(sorted(skill.files))}")
    click.echo("  .gitattributes: *.md merge=t2s-skill (rules-based merge driver configured)")
    click.echo("  notes: refs/notes/t2s (shown by git log)")
    if repo.ignored_by:
        click.echo(f"  ignored by the enclosing repository {repo.ignored_by} (.git/info/exclude)")


@main.command("log")
@click.argument("refs", nargs=-1)
@click.option("-n", "--max-count", type=click.IntRange(min=1), help="Show at most N commits.")
@click.option("--first-parent", is_flag=True, help="Only the main line: merges, not patches.")
@repo_option
def log(refs, max_count, first_parent, repo_path):
    """The evolution of main and the result branches (or REFS): merges, lessons, evidence."""
    repo = SkillsRepo.open(repo_path)
    refs = list(refs) or [MAIN, *sorted(_result_branches(repo))]
    for info in repo.log(refs, max_count=max_count, first_parent=first_parent):
        click.echo(_format_commit(info))


def _result_branches(repo: SkillsRepo) -> set[str]:
    return {name for name in repo.branches("t2s/") if name.endswith("/result")}


def _kind(info: CommitInfo) -> str:
    if info.is_merge:
        return f"merge of {len(info.parents)}"
    if not info.parents:
        return "init"
    if "T2S-Task" in info.trailers or "T2S-Trajectory" in info.trailers:
        return "patch"
    return "commit"


def _format_commit(info: CommitInfo) -> str:
    refs = f"  ({', '.join(info.refs)})" if info.refs else ""
    lines = [f"{_kind(info)} {info.sha[:10]}{refs}  {info.date}", f"    {info.subject}"]
    summary = [f"{label} {info.trailers[key]}" for key, label in _SUMMARY_TRAILERS
               if key in info.trailers]
    if summary:
        lines.append("    " + " · ".join(summary))
    body = _body_without_trailers(info)
    lines += [f"    {line}".rstrip() for line in body.splitlines()]
    summarised = {key for key, _label in _SUMMARY_TRAILERS}
    lines += [f"    {key}: {value}" for key, value in info.trailers.items()
              if key not in summarised]
    if info.note:
        lines.append("    note: " + info.note.strip().splitlines()[0])
    return "\n".join(lines) + "\n"


def _body_without_trailers(info: CommitInfo) -> str:
    paragraphs = info.body.strip().split("\n\n")
    if info.trailers:  # git only reads trailers from the last paragraph
        paragraphs = paragraphs[:-1]
    return "\n\n".join(paragraphs).strip()


@main.command("blame")
@click.argument("file", required=False, default=SKILL_FILE)
@click.option("--ref", default=MAIN, show_default=True, help="Revision to blame.")
@repo_option
def blame(file, ref, repo_path):
    """Each line of FILE with the commit and the trajectories that introduced it."""
    lines = SkillsRepo.open(repo_path).blame(ref, file)
    origins = [_origin(line) for line in lines]
    width = min(max((len(origin) for origin in origins), default=0), 60)
    for line, origin in zip(lines, origins):
        click.echo(f"{line.sha[:8]} {origin:<{width}} {line.number:>4}| {line.text}")


def _origin(line: BlameLine) -> str:
    """Where a line came from: the task (and trajectory) of the patches that proposed it."""
    if len(line.sources) > 1:
        tasks = [source.trailers.get("T2S-Task", source.sha[:8]) for source in line.sources]
        shown = ", ".join(tasks[:3]) + (", ..." if len(tasks) > 3 else "")
        return f"tasks {shown} ({len(tasks)} patches)"
    trailers = line.sources[0].trailers if line.sources else line.trailers
    if "T2S-Task" in trailers or "T2S-Trajectory" in trailers:
        task = trailers.get("T2S-Task", "?")
        trajectory = trailers.get("T2S-Trajectory")
        return f"task {task}" + (f" ({trajectory})" if trajectory else "")
    if "T2S-Init" in line.trailers:
        return "initial skill"
    return line.subject[:40]


@main.command("show")
@click.argument("patch")
@repo_option
def show(patch, repo_path):
    """A patch (branch, RUN/N or sha): its message, trailers, note and diff."""
    repo = SkillsRepo.open(repo_path)
    info = repo.commit_info(repo.resolve_patch(patch))
    click.echo(f"commit {info.sha}" + (f"  ({', '.join(info.refs)})" if info.refs else ""))
    if info.is_merge:
        click.echo("Merge: " + " ".join(parent[:10] for parent in info.parents))
    click.echo(f"Author: {info.author} <{info.email}>")
    click.echo(f"Date:   {info.date}\n")
    click.echo("\n".join(f"    {line}".rstrip() for line in info.message.splitlines()))
    if info.note:
        click.echo("\nNote (refs/notes/t2s):")
        click.echo("\n".join(f"    {line}".rstrip() for line in info.note.splitlines()))
    diff = repo.show_diff(info.sha)
    if diff:
        click.echo("\n" + diff)


@main.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--stat", is_flag=True, help="Only which files changed and how much.")
@repo_option
def diff(a, b, stat, repo_path):
    """The skill's diff between two revisions A and B (branches, shas or RUN/N patches)."""
    click.echo(SkillsRepo.open(repo_path).diff(a, b, stat=stat))


@main.command("push")
@click.argument("remote", required=False, default="origin")
@repo_option
def push(remote, repo_path):
    """Push main, the result branches and the notes to REMOTE (a remote name or URL)."""
    repo = SkillsRepo.open(repo_path)
    with repo.lock():
        result = repo.push(remote)
    _echo_sync(f"Pushed to {remote}", result.updates)


@main.command("pull")
@click.argument("remote", required=False, default="origin")
@repo_option
def pull(remote, repo_path):
    """Fetch main, result branches and notes from REMOTE and bring main up to date."""
    repo = SkillsRepo.open(repo_path)
    with repo.lock():
        result = repo.pull(remote)
    _echo_sync(f"Pulled from {remote}", result.updates)


@main.command("clone")
@click.argument("url")
@click.argument("path", required=False, default=DEFAULT_PATH, type=click.Path(file_okay=False))
def clone(url, path):
    """Clone a shared skills repository (with notes, result branches and merge config)."""
    repo = SkillsRepo.clone(url, path)
    info = repo.commit_info(MAIN)
    click.echo(f"Cloned {url} into {repo.path}")
    click.echo(f"  main {info.sha[:7]}  {info.subject}")
    results = sorted(_result_branches(repo))
    if results:
        click.echo(f"  result branches: {', '.join(results)}")
    if repo.ignored_by:
        click.echo(f"  ignored by the enclosing repository {repo.ignored_by} (.git/info/exclude)")


def _echo_sync(headline: str, updates: list[str]) -> None:
    click.echo(headline)
    for update in updates:
        click.echo(f"  {update}")
