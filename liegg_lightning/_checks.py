"""Argument checks shared by the package's constructors and functions.

`bool` is a subclass of `int` in Python, so `isinstance(True, int)` holds; a
flag passed where a count is meant is a configuration error, and these checks
say so.
"""

from typing import Any, Optional

__all__ = ["check_callback_arguments", "check_int", "is_int"]


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


def check_callback_arguments(
    *, every_n_epochs: Optional[int], overhead: float, max_samples: Any, input_key: Any, log_generators: int,
    layer: Optional[str], prefix: str, dataloader_idx: Any, log_images: bool, save_reports: bool,
    background_drawing: bool, verbose: bool,
) -> None:
    """``LieGGCallback``'s own arguments, checked before any work: a clear error names what was expected."""
    check_int("every_n_epochs", every_n_epochs, 0, allow_none=True)
    if isinstance(overhead, bool) or not isinstance(overhead, (int, float)) or not 0 < overhead <= 10:
        raise ValueError(f"Expected `overhead` to be a number in (0, 10] (e.g. 0.1 for 10%), got {overhead!r}.")
    if max_samples != "auto":
        check_int("max_samples", max_samples, 1, allow_none=True)
    if isinstance(input_key, bool) or not isinstance(input_key, (int, str)):
        raise ValueError(f"Expected `input_key` to be an int index or a str key, got {input_key!r}.")
    check_int("log_generators", log_generators, 0)
    if layer is not None and not isinstance(layer, str):
        raise ValueError(f"Expected `layer` to be the name of a submodule or None, got {layer!r}.")
    loaders = [dataloader_idx] if not isinstance(dataloader_idx, (list, tuple)) else list(dataloader_idx)
    if dataloader_idx is not None and (not loaders or not all(is_int(i) and i >= 0 for i in loaders)):
        raise ValueError(
            f"Expected `dataloader_idx` to be None, a non-negative int or a list of them, got {dataloader_idx!r}."
        )
    if not isinstance(prefix, str):
        raise ValueError(f"Expected `prefix` to be a str (e.g. 'liegg/'), got {prefix!r}.")
    for name, flag in (("log_images", log_images), ("save_reports", save_reports),
                       ("background_drawing", background_drawing), ("verbose", verbose)):
        if not isinstance(flag, bool):
            raise ValueError(f"Expected `{name}` to be a bool, got {flag!r}.")
