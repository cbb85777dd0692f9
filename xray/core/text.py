"""Text for people: one-line messages out of any exception or multi-line text."""

from __future__ import annotations


def one_line(text: object) -> str:
    """Collapse any text (an exception's message too) to a single line; a type name if empty."""
    line = " ".join(str(text).split())
    if not line and isinstance(text, BaseException):
        return type(text).__name__
    return line
