"""argparse value types shared by the command line (``latentds.cli``) and the applications'
own parsers (``latentds.sweep``): a core module, so both layers can import it."""

from __future__ import annotations

import argparse

__all__ = ["non_negative_int", "positive_int"]


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1, or an argparse error that says what was given."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (a count where 0 means 'none', e.g. bootstrap resamples)."""
    return _int_at_least(text, 0)
