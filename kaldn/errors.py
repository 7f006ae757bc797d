"""Errors the app's logic raises for a request it cannot serve: their text is the message for the user."""

from __future__ import annotations


class UserError(ValueError):
    """A request that cannot be served (bad input, wrong scale, unknown variant); ``str(err)`` is for the user."""


class BusyError(RuntimeError):
    """Another fine-tuning job is running (one at a time)."""


def quoted(value: object, limit: int = 60) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters: a client's value may be a megabyte long, and
    messages are shown and logged."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + "...'" + f" ({len(text):,} characters)"
