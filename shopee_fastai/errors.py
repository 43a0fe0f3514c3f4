"""One exception type for everything a user can fix: the CLI prints its message as one line, exit code 2."""

from __future__ import annotations

EXIT_USER_ERROR = 2


class ShopeeError(Exception):
    """A problem with the user's input (file, row, column, option) whose message names it and the fix."""

    exit_code = EXIT_USER_ERROR
