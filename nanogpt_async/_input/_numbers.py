"""Whole-number arguments, checked in one place: body fields and batch settings alike.

One meaning of "a whole number from ``low`` to ``high``" and one way of saying it is wrong. A
``bool`` is never one (``True`` is an ``int`` to Python, not to a user). Whether ``2.0`` is one
depends on where the value comes from, so callers say (``whole_floats``).
"""

from __future__ import annotations

from nanogpt_async._errors import InvalidInputError

__all__ = ["whole_number"]


def whole_number(
    name: str, value: object, *, low: int, high: int | None = None, whole_floats: bool = False
) -> int:
    """``value`` as an ``int`` from ``low`` to ``high`` (``None``: no upper bound).

    ``whole_floats``: ``2.0`` is the integer 2, as JSON Schema's ``integer`` says; right for
    request fields, which come from JSON and CSV files too. Off for Python arguments such as a
    batch's ``concurrency``, where a float is some computation's result: ``len(items) / 4``
    would pass for 8 items and fail for 9, so any float is refused.

    Raises:
        InvalidInputError: not a whole number, or out of bounds; the message names ``name``,
            the bounds and the value.
    """
    bounds = f"at least {low}" if high is None else f"from {low} to {high}"
    if whole_floats and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        wanted = f"of {bounds}" if high is None else bounds
        raise InvalidInputError(f"{name} must be a whole number {wanted}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise InvalidInputError(f"{name} must be {bounds}, got {value!r}")
    return value
