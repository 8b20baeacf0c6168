"""Finding the input tensor inside a batch, and walking data of any supported form."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Union

from torch import Tensor

from liegg_lightning._errors import InputError

__all__ = ["InputKey", "extract_input", "iterate_inputs"]

InputKey = Union[int, str]


def extract_input(batch: Any, input_key: InputKey = 0) -> Tensor:
    """The input tensor of a batch.

    A bare tensor batch is the input itself; for a tuple or list batch the element at
    ``input_key`` (an int); for a dict batch the value at ``input_key``.

    Raises:
        ValueError: the key is not in the batch, or what it selects is not a tensor.
    """
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping):
        if input_key not in batch:
            raise InputError(
                f"Expected the batch dict to hold the input under `input_key={input_key!r}`; "
                f"its keys are {sorted(map(str, batch.keys()))}."
            )
        value = batch[input_key]
    elif isinstance(batch, (tuple, list)):
        if not isinstance(input_key, int) or not -len(batch) <= input_key < len(batch):
            raise InputError(
                f"Expected `input_key` to be an int index into the batch of length {len(batch)}, got {input_key!r}."
            )
        value = batch[input_key]
    else:
        raise InputError(
            f"Expected a batch that is a Tensor, a tuple/list or a dict, got {type(batch).__name__}."
        )
    if not isinstance(value, Tensor):
        raise InputError(
            f"Expected the batch element at `input_key={input_key!r}` to be a Tensor, got {type(value).__name__}."
        )
    return value


def iterate_inputs(data: Union[Tensor, Iterable[Any]], batch_size: int, input_key: InputKey = 0) -> Iterator[Tensor]:
    """Input tensors from a tensor (split into ``batch_size`` chunks), a DataLoader or any iterable of batches."""
    if isinstance(data, Tensor):
        if data.ndim == 0 or data.shape[0] == 0:
            raise ValueError(f"Expected a batched input tensor (B, ...) with B >= 1, got shape {tuple(data.shape)}.")
        yield from data.split(batch_size)
        return
    for batch in data:
        yield extract_input(batch, input_key)
