"""Exceptions that carry a message meant for the person running tlearn."""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user: the message names the problem and the fix.

    The command line prints the message as one line and exits with code 2,
    so it must be complete on its own (no traceback follows it).
    """


class WeightsUnavailableError(UserInputError):
    """Pretrained weights were asked for but could not be found or downloaded."""
