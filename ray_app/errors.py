"""User-facing errors: caught by the CLI, printed without a traceback, exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (config, data, arguments). The message says what,
    where and how to fix it; the CLI prints it and exits with code 2."""

    exit_code = 2


class ConfigError(UserError):
    """One or more configuration problems, all reported at once."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in {source}:\n{lines}")


class DataError(UserError):
    """The dataset cannot be used as configured (missing file, column, class...)."""


class SplitContractError(RuntimeError):
    """A stage tried to read a split the split contract forbids it. This is a bug in the
    caller, not a user error, so it is not a UserError: it must fail loudly."""


class InsightsError(UserError):
    """A request for a run's insights that cannot be answered as asked: an unknown
    projection method, bad parameters, an unknown colouring (a 422 to an HTTP client)."""


class InsightsNotReady(UserError):
    """The run has not produced what was asked for yet (no insights, no calibration
    views), or they are older than its model; the message says which command makes them."""


class ExampleNotFound(UserError):
    """No val_test example of the run has this id (a 404 to an HTTP client)."""
