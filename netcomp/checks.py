"""The one config checker: every settings dataclass (the trainer's, each agent's) checks its fields with these.

Each function takes the owner's name (``"TASConfig"``), the field's name and its value, coerces what YAML may
give (``1e-3`` read as a string, ``30.0`` for an integer) and returns the clean value, or raises ValueError in
one format for every config in the project::

    TASConfig.flop_ratio=1.5 is invalid: expected a number in (0, 1]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def invalid(owner: str, name: str, value: Any, expected: str) -> ValueError:
    """The error for a bad setting, in the one format."""
    return ValueError(f"{owner}.{name}={value!r} is invalid: expected {expected}")


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


def as_float(owner: str, name: str, value: Any, low: float | None = None, high: float | None = None,
             low_open: bool = False, high_open: bool = False, optional: bool = False) -> float | None:
    """A finite float in the given range (numeric strings accepted: YAML 1.1 reads ``1e-3`` as a string)."""
    if value is None and optional:
        return None
    expected = _range_text(low, high, low_open, high_open) + (" (or null)" if optional else "")
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise invalid(owner, name, value, expected) from None
    if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
        raise invalid(owner, name, value, expected)
    number = float(number)
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        raise invalid(owner, name, value, expected)
    return number


def as_int(owner: str, name: str, value: Any, minimum: int, optional: bool = False) -> int | None:
    """An integer >= ``minimum`` (an integral float such as ``30.0`` is accepted)."""
    if value is None and optional:
        return None
    expected = f"an integer >= {minimum}" + (" (or null)" if optional else "")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid(owner, name, value, expected)
    return value


def as_bool(owner: str, name: str, value: Any, optional: bool = False) -> bool | None:
    """True or false."""
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise invalid(owner, name, value, "true or false" + (" (or null)" if optional else ""))
    return value


def as_choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """One of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise invalid(owner, name, value, f"one of {', '.join(map(str, choices))}")
    return value


def as_floats(owner: str, name: str, value: Any, low: float | None = None, high: float | None = None,
              low_open: bool = False, nonempty: bool = True, scalar_ok: bool = False) -> list[float]:
    """A list of finite floats in range; ``scalar_ok`` accepts one number as a list of one."""
    if scalar_ok and isinstance(value, int | float | str) and not isinstance(value, bool):
        value = [value]
    expected = ("a non-empty list of " if nonempty else "a list of ") + _range_text(low, high, low_open, False)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or (nonempty and not value):
        raise invalid(owner, name, value, expected)
    try:
        return [as_float(owner, name, v, low, high, low_open) for v in value]
    except ValueError:
        raise invalid(owner, name, value, expected) from None


def did_you_mean(value: Any, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a mistyped ``value``, or an empty string."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
