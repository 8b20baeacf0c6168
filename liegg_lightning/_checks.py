"""Argument checks shared by the package's constructors and functions.

`bool` is a subclass of `int` in Python, so `isinstance(True, int)` holds; a
flag passed where a count is meant is a configuration error, and these checks
say so.
"""

from typing import Any, Optional

__all__ = ["check_int", "is_int"]


def is_int(value: Any) -> bool:
    """Whether `value` is an integer and not a bool.

    Args:
        value: anything.

    Returns:
        True for `int` values (and subclasses) other than `True`/`False`.
    """
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: Optional[int] = None, *, allow_none: bool = False) -> None:
    """Raise the package's usual `ValueError` unless `value` is an int of at least `minimum`.

    Args:
        name: the argument's name, as the user wrote it.
        value: the argument.
        minimum: the smallest allowed value, or None for any int.
        allow_none: whether None is also accepted.

    Raises:
        ValueError: "Expected `name` to be a positive int, got 0." (the wording follows `minimum`).
    """
    if allow_none and value is None:
        return
    if is_int(value) and (minimum is None or value >= minimum):
        return
    if minimum == 1:
        kind = "a positive int"
    elif minimum == 0:
        kind = "a non-negative int"
    elif minimum is None:
        kind = "an int"
    else:
        kind = f"an int of at least {minimum}"
    if allow_none:
        kind += " or None"
    raise ValueError(f"Expected `{name}` to be {kind}, got {value!r}.")
