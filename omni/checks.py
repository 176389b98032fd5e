"""One validation of numeric options, wherever they enter (configs, release files, command lines).

    check_number("model.lr", lr, above=0)            # finite and > 0
    check_number("guidance", g, at_least=0)           # finite and >= 0
    check_number("data.batch_size", b, at_least=1, integer=True)

A value that is not a number, not finite (NaN, inf), of the wrong kind or out of range raises a
ValueError naming the option, the rule and the value, so every entry point reports it as one
line instead of failing later inside torch ("Sizes of tensors must match", ZeroDivisionError).
"""

from __future__ import annotations

import math
import numbers


def check_number(
    name: str,
    value,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    integer: bool = False,
):
    """`value` if it is a finite number within the bounds (an int where `integer`); else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if integer and not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    rules = [
        (at_least, lambda v, b: v >= b, ">="),
        (above, lambda v, b: v > b, ">"),
        (at_most, lambda v, b: v <= b, "<="),
        (below, lambda v, b: v < b, "<"),
    ]
    broken = [
        f"{sign} {bound}" for bound, holds, sign in rules if bound is not None and not holds(value, bound)
    ]
    if broken:
        wanted = " and ".join(f"{sign} {bound}" for bound, _, sign in rules if bound is not None)
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return value


def check_numbers(owner: str, values: dict, rules: dict) -> None:
    """check_number for each `rules` entry present in `values`, named `owner.name`."""
    for name, rule in rules.items():
        if name in values and values[name] is not None:
            check_number(f"{owner}.{name}", values[name], **rule)
