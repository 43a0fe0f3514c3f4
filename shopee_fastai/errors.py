"""Errors a user can fix: the CLI prints each as one line and exits with code 2, never a traceback."""

from __future__ import annotations

EXIT_USER_ERROR = 2


class ShopeeError(Exception):
    """A problem with the user's input (file, row, column, option) whose message names it and the fix."""

    exit_code = EXIT_USER_ERROR


class WeightsUnavailable(ShopeeError):
    """Pretrained weights that cannot be had here (no local file, no offline package, no network)."""
