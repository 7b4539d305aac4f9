"""Options of `t2s evolve` and `t2s eval`: defaults, then `t2s.toml`, then the command line.

`t2s.toml` in the working directory holds the same options as the command line, as flat keys
(dashes or underscores both work), for example::

    tasks = "bundled"
    model = "models/Qwen3-8B-Q4_K_M.gguf"
    rounds = 2
    workers = 2

An option given on the command line always wins over the file; a key the file should not have
is an error naming it, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from t2s.errors import ConfigError

CONFIG_FILE = "t2s.toml"
ANALYST_VARIANTS = ("error", "success", "combined")
SPLITS = ("train", "test", "all")


@dataclass
class Config:
    tasks: str = "bundled"  # "bundled" or a SpreadsheetBench-layout directory
    model: str = "embedded"  # a GGUF under models/, a path, or openai:URL#name
    rounds: int = 1
    analysts: str = "error"  # error | success | combined
    workers: int = 2
    parallel: int | None = None  # conversations per worker at once; None: $T2S_PARALLEL or 1
    batch: int = 32  # patches per merge node
    turns: int = 20  # agent turn budget per task
    tokens: int = 60000  # agent token budget per task
    max_tokens: int = 512  # tokens per model reply
    timeout: int = 600  # seconds one task may take in the pool before it is given up
    limit: int | None = None  # use only the first N tasks of each split
    split_ratio: float = 0.5  # share of the suite used to evolve; the rest is held out
    split: str = "test"  # which split `t2s eval` measures on
    skill: str = "main"  # the skill an evolve run starts from (a ref of the skills repository)
    repo: str = "skills_repo"
    runs_dir: str = "runs"
    accept: bool = False  # move main to each round's result without review
    run_id: str | None = None
    skills: list[str] = field(default_factory=list)  # `t2s eval --skill`, in column order
    no_skill: bool = False
    ablate: str | None = None
    out: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        return _build(data, source="stored options")


_KEYS = {f.name: f for f in fields(Config)}
_TYPES: dict[str, tuple[type, ...]] = {
    "tasks": (str,),
    "model": (str,),
    "rounds": (int,),
    "analysts": (str,),
    "workers": (int,),
    "parallel": (int, type(None)),
    "batch": (int,),
    "turns": (int,),
    "tokens": (int,),
    "max_tokens": (int,),
    "timeout": (int,),
    "limit": (int, type(None)),
    "split_ratio": (float, int),
    "split": (str,),
    "skill": (str,),
    "repo": (str,),
    "runs_dir": (str,),
    "accept": (bool,),
    "run_id": (str, type(None)),
    "skills": (list,),
    "no_skill": (bool,),
    "ablate": (str, type(None)),
    "out": (str, type(None)),
}


def load_config(cli_options: dict[str, Any] | None = None, cwd: Path | str | None = None) -> Config:
    """Defaults, overlaid by `<cwd>/t2s.toml` if present, overlaid by the options given.

    `cli_options` maps option names to values; a value of None (or an empty list or tuple)
    means "not given on the command line", so the file or the default applies.
    """
    path = Path(cwd if cwd is not None else Path.cwd()) / CONFIG_FILE
    merged: dict[str, Any] = {}
    if path.is_file():
        merged.update(read_config_file(path))
    for key, value in (cli_options or {}).items():
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        merged[_normalise_key(key, source="command line")] = value
    return _build(merged, source="command line")


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError(
                f"{path}: reading t2s.toml needs Python 3.11 or the tomli package; "
                "install tomli or pass the options on the command line"
            ) from None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read it ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error}); fix the file") from None
    return {_normalise_key(key, source=str(path)): value for key, value in data.items()}


def _normalise_key(key: str, source: str) -> str:
    name = str(key).replace("-", "_")
    if name not in _KEYS:
        known = ", ".join(sorted(k.replace("_", "-") for k in _KEYS))
        raise ConfigError(f"{source}: unknown option {key!r}; known options: {known}")
    return name


def _build(values: dict[str, Any], source: str) -> Config:
    checked: dict[str, Any] = {}
    for key, value in values.items():
        name = _normalise_key(key, source)
        if isinstance(value, tuple):
            value = list(value)
        allowed = _TYPES[name]
        # bool is an int in Python; a `rounds = true` typo must not pass as 1.
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            wanted = " or ".join("none" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(f"{source}: option {name!r} must be {wanted}, got {value!r}")
        checked[name] = value
    config = Config(**checked)
    _validate(config, source)
    return config


def _validate(config: Config, source: str) -> None:
    positive = ("rounds", "workers", "batch", "turns", "tokens", "max_tokens", "timeout")
    for name in positive:
        if getattr(config, name) < 1:
            raise ConfigError(f"{source}: {name} must be at least 1, got {getattr(config, name)}")
    if config.batch < 2:
        raise ConfigError(f"{source}: batch must be at least 2 (patches merged per node)")
    if config.parallel is not None and config.parallel < 1:
        raise ConfigError(f"{source}: parallel must be at least 1, got {config.parallel}")
    if config.limit is not None and config.limit < 1:
        raise ConfigError(f"{source}: limit must be at least 1, got {config.limit}")
    if config.analysts not in ANALYST_VARIANTS:
        raise ConfigError(
            f"{source}: analysts must be one of {', '.join(ANALYST_VARIANTS)}, "
            f"got {config.analysts!r}"
        )
    if config.split not in SPLITS:
        raise ConfigError(f"{source}: split must be one of {', '.join(SPLITS)}, got {config.split!r}")
    if not 0.0 < float(config.split_ratio) < 1.0:
        raise ConfigError(f"{source}: split_ratio must be between 0 and 1, got {config.split_ratio}")
    config.split_ratio = float(config.split_ratio)
    if not all(isinstance(ref, str) and ref for ref in config.skills):
        raise ConfigError(f"{source}: skills must be a list of skill refs (strings)")
