"""The one exception type users see as a single line."""


class SweepsError(Exception):
    """A problem the user can fix: the message names it and says how.

    The CLI prints it as one line and exits non-zero; anything else is a bug
    and shows a traceback only with ``--debug``.
    """

    exit_code = 2
