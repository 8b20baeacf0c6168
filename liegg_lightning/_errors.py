"""The one error type that means "the configuration does not fit the data", as opposed to a model failure."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """An input, batch or output that does not fit the configured action, key or output mode.

    Raised only by the package's own checks, before or around the model's forward; the callback
    re-raises it as a configuration error, while anything raised inside the user's model is a
    model failure that it turns into a warning.
    """
