"""User-facing errors: the CLI prints their message and exits with status 2, without a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a suite, a name, a path, a file); the message says what and how."""

    exit_code = 2


class ConfigError(UserError):
    """A suite, an override or a method's hyperparameters are invalid."""

    def __init__(self, problems: list[str] | str, source: str = "") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = head + self.problems[0]
        else:
            message = head + f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class CheckpointError(UserError):
    """A checkpoint or result file that cannot be read or does not fit the configuration."""
