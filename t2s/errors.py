"""The few exceptions t2s raises on purpose.

Each carries one line that says what is wrong and what to do about it; the CLI prints it as
``Error: ...`` and exits non-zero, with no traceback.
"""


class T2SError(Exception):
    """A problem the user can fix: bad input, a missing file, an unreachable server."""


class ConfigError(T2SError):
    """Options or t2s.toml are invalid."""


class ModelError(T2SError):
    """A model cannot be found, loaded or reached, or returned something unusable."""


class IncompleteReply(ModelError):
    """The model did not finish a schema-constrained reply within its token budget.

    Carries the usage spent, so a caller that treats it as one wasted turn can still count it.
    """

    def __init__(self, message: str, usage=None, seconds: float = 0.0):
        super().__init__(message)
        self.usage = usage
        self.seconds = seconds


class TaskError(T2SError):
    """A task suite or a task's workbooks cannot be read."""


class SkillError(T2SError):
    """A skill directory is missing or malformed."""


class PatchError(T2SError):
    """A patch is malformed or cannot be applied."""


class RepoError(T2SError):
    """The skills repository is missing, busy or in a state t2s will not touch."""


class RunError(T2SError):
    """A run directory is missing or inconsistent."""
