"""Every error ray-app reports to a person, in one place.

A `UserError` is a problem the user can fix (config, data, arguments, a request): its
message says what, where and how to fix it. The CLI prints it without a traceback and
exits with `exit_code` (2); the control plane answers `http_status` with
`{"error": http_error, "detail": message}`. Each subclass carries its own status, so
no table elsewhere maps classes to statuses.

Errors of the lower packages (`calibration.CalibrationError`, `trainers` setup errors,
`serve.bundle.BundleError`) are theirs; ray_app turns them into these where it calls
them.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (config, data, arguments). The message says what,
    where and how to fix it; the CLI prints it and exits with code 2."""

    exit_code = 2
    http_status = 422
    http_error = "invalid request"

    def http_fields(self) -> dict[str, str]:
        """Fields a client acts on, answered beside `error` and `detail`."""
        return {}


class ConfigError(UserError):
    """One or more configuration problems, all reported at once."""

    http_error = "invalid config"

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in {source}:\n{lines}")


class DataError(UserError):
    """The dataset cannot be used as configured (missing file, column, class...)."""

    http_error = "invalid data"


class InvalidRequest(UserError):
    """A request whose values cannot be used as given."""


class InsightsError(UserError):
    """A request for a run's insights that cannot be answered as asked: an unknown
    projection method, bad parameters, an unknown colouring."""


class InvalidName(UserError):
    """A run, template or family name that is not a plain file name: it could reach
    outside its root."""

    http_status = 400
    http_error = "invalid name"


class NotFound(UserError):
    """No such run, template, family or example."""

    http_status = 404
    http_error = "not found"


class TemplateNotFound(NotFound):
    """No template of that name."""


class ExampleNotFound(NotFound):
    """No val_test example of the run has this id."""


class ReviewItemNotFound(NotFound):
    """No answer of the run's review queue has this item id, or (undo) it has no review."""


class InvalidLabel(InvalidRequest):
    """A review label that is not one of the run's classes."""

    http_error = "invalid label"


class Conflict(UserError):
    """The request conflicts with the current state: the run is running, the template
    exists."""

    http_status = 409
    http_error = "conflict"


class RunExists(Conflict):
    """A run of that name exists and the launch did not say what to do about it
    (`on_exists`: new, resume or replace): a finished run is never changed silently."""

    http_error = "run exists"

    def __init__(self, message: str, run: str) -> None:
        super().__init__(message)
        self.run = run

    def http_fields(self) -> dict[str, str]:
        return {"run": self.run, "link": f"/runs/{self.run}"}


class TemplateExists(Conflict):
    """A template of that name exists and the save did not ask to overwrite it."""


class AlreadyReviewed(Conflict):
    """The review item has a label (or a skip) already: a second submit never silently
    replaces the first; the reviewer undoes it first."""

    http_error = "already reviewed"

    def __init__(self, message: str, reviewer: str, reviewed_at: str) -> None:
        super().__init__(message)
        self.reviewer = reviewer
        self.reviewed_at = reviewed_at

    def http_fields(self) -> dict[str, str]:
        return {"reviewer": self.reviewer, "reviewed_at": self.reviewed_at}


class NothingToExport(Conflict):
    """A review export was asked for while no item is labelled (skips do not count)."""

    http_error = "nothing to export"


class NotReady(UserError):
    """The run has not produced what was asked for yet (no trained model, no policy,
    no insights), or it is older than the run's model; the message names the command
    that makes it."""

    http_status = 409
    http_error = "not ready"


class InsightsNotReady(NotReady):
    """The run's insights (or calibration views) are missing or older than its model."""


class Unavailable(UserError):
    """A backend the request needs (the Ray job server) is not reachable."""

    http_status = 503
    http_error = "unavailable"


class SplitContractError(RuntimeError):
    """A stage tried to read a split the split contract forbids it. This is a bug in the
    caller, not a user error, so it is not a UserError: it must fail loudly."""
