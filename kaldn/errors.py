"""Errors the app's logic raises for a request it cannot serve: their text is the message for the user."""

from __future__ import annotations


class UserError(ValueError):
    """A request that cannot be served (bad input, wrong scale, unknown variant); ``str(err)`` is for the user."""


class BusyError(RuntimeError):
    """Another fine-tuning job is running (one at a time)."""
