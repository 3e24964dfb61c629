"""The one exception type users see as a single line."""


class SweepsError(Exception):
    """A problem the user can fix: the message names it and says how.

    The CLI prints it as one line and exits non-zero; anything else is a bug
    and shows a traceback only with ``--debug``.
    """

    exit_code = 2


# The exit code after a stop by each signal: 128 + its number, as shells report it (Ctrl-C is SIGINT).
EXIT_CODES = {"Ctrl-C": 130, "SIGHUP": 129, "SIGTERM": 143}


def first_line(e: BaseException) -> str:
    """An exception's first line (its type's name when it has no message)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class SweepFailed(SweepsError):
    """The sweep ran but its trials keep failing: the last failure's reason says why (exit code 1)."""

    exit_code = 1
