"""Polarization rows of several layers of a network from one pass: where in the network a symmetry appears.

Each named submodule's output is analysed like a model output: for invariance (no output action,
rows ``J_l(x) A_i(x)``) or for equivariance (an output action on the layer's output, rows
``J_l(x) A_i(x) - A_out,i(F_l(x))``), ``J_l`` the Jacobian of the layer's output with respect to
the network's input. The name ``""`` is the model itself, its output after ``output_transform``
(as ``named_modules()`` names the root); ``output_transform`` applies to no other layer.

Forward mode carries one tangent per basis element through the whole network; forward hooks on
the analysed submodules return their outputs from the differentiated function, so every layer's
output and its tangent come out of the same Jacobian-vector product: all layers cost about what
one costs. Reverse mode runs one forward pass (hooks keep each layer's output with its graph) and
then each layer's backward passes, ``R`` per layer (the rows per sample of the output mode). Once
a forward pass is paid for, every layer's rows come with it, so ``"auto"`` chooses between all
forward (``m`` JVPs) and all reverse (``sum_l R_l`` backward passes), whichever is fewer.

:func:`batch_rows` is the one entry point of the metric: the model's own output is the layer
``""``, so one model output and several layers take the same path.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from liegg_lightning._errors import InputError
from liegg_lightning._memory import PassFootprint
from liegg_lightning.actions import GroupAction
from liegg_lightning.functional.footprint import module_storages, saved_storages
from liegg_lightning.functional.polarization import (
    MODEL_OUTPUT,
    BatchRows,
    OutputMode,
    OutputsFn,
    RowOptions,
    check_output_action,
    checked_output,
    model_output,
    outputs_rows,
    outputs_rows_per_sample,
)

__all__ = [
    "MODEL_OUTPUT", "batch_rows", "check_layers", "layer_output_fn", "layer_rows", "pass_footprint", "rows_per_sample",
]

Layers = Union[Sequence[str], Mapping[str, Optional[GroupAction]]]


def check_layers(
    action: GroupAction, layers: Layers, output_action: Optional[GroupAction] = None
) -> Dict[str, Optional[GroupAction]]:
    """Validate ``layers`` and give each analysed layer its output action, in the given order.

    Args:
        action: The input action; every output action must share its generators.
        layers: Submodule names (each analysed with ``output_action``), or a mapping
            ``name -> output action`` (``None``: invariance). ``""`` names the model's own output.
        output_action: The output action of the layers given as a list (``None``: invariance).

    Returns:
        ``name -> output action or None``.

    Raises:
        ValueError: For a non-list, an empty list, repeated or non-str names, or an output action
            whose generators differ from the input action's.
    """
    if isinstance(layers, Mapping):
        items = list(layers.items())
    elif isinstance(layers, (list, tuple)):
        items = [(name, output_action) for name in layers]
    else:
        raise ValueError(
            "Expected `layers` to be a list of submodule names or a dict name -> output action (or None), "
            f"got {type(layers).__name__}."
        )
    if not items:
        raise ValueError("Expected `layers` to name at least one submodule, got none.")
    out: Dict[str, Optional[GroupAction]] = {}
    for name, act in items:
        if not isinstance(name, str):
            raise ValueError(f"Expected submodule names (str) in `layers`, got {name!r}.")
        if name in out:
            raise ValueError(f"Expected each layer once in `layers`, got {name!r} twice.")
        try:
            check_output_action(action, act)
        except ValueError as err:
            where = "the model output" if name == MODEL_OUTPUT else f"layer {name!r}"
            raise ValueError(f"For {where}: {err}") from None
        out[name] = act
    return out


def _resolve_modules(model: Any, names: Sequence[str]) -> Dict[str, nn.Module]:
    """The submodules of ``model`` by name; :class:`InputError` listing the valid names for a bad one."""
    if not isinstance(model, nn.Module):
        raise InputError(
            f"Expected the model to be a torch.nn.Module when `layers` are given (their names are submodule "
            f"names), got {type(model).__name__}."
        )
    modules = dict(model.named_modules())
    missing = [n for n in names if n != MODEL_OUTPUT and n not in modules]
    if missing:
        valid = [n for n in modules if n]
        raise InputError(
            f"{', '.join(map(repr, missing))} {'is not a submodule' if len(missing) == 1 else 'are not submodules'} "
            f"of {type(model).__name__}. Expected names from named_modules(): "
            f"{', '.join(valid[:30])}{' ...' if len(valid) > 30 else ''} (or '' for the model output)."
        )
    return {n: modules[n] for n in names if n != MODEL_OUTPUT}


def _run_capturing(model: nn.Module, modules: Mapping[str, nn.Module], x: Tensor) -> Tuple[Any, Dict[str, Any]]:
    """The model's output at ``x`` and the outputs of ``modules`` (their last call) during that pass.

    The forward hooks are removed when the pass ends, whatever happens.
    """
    captured: Dict[str, Any] = {}
    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out)))
        out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return out, captured


def layer_output_fn(model: nn.Module, name: str) -> Callable[[Tensor], Tensor]:
    """A function from the model's input to the output of its submodule ``name`` (its last call).

    Args:
        model: The network.
        name: A name from ``model.named_modules()``.

    Raises:
        InputError: When ``name`` is not a submodule (at once) or was not called by the model's
            forward (when the function runs).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> layer_output_fn(net, "1")(torch.randn(4, 3)).shape
        torch.Size([4, 8])
    """
    return _LayerOutput(model, name, _resolve_modules(model, [name]))


class _LayerOutput:
    """The function :func:`layer_output_fn` returns: a plain object, so it pickles (``ddp_spawn``, checkpoints)."""

    def __init__(self, model: nn.Module, name: str, modules: Dict[str, nn.Module]) -> None:
        self.model, self.name, self.modules = model, name, modules

    def __call__(self, x: Tensor) -> Tensor:
        _, captured = _run_capturing(self.model, self.modules, x)
        if self.name not in captured:
            raise InputError(f"The layer {self.name!r} was not called by the model's forward.")
        return captured[self.name]


def outputs_function(
    model: Callable[[Tensor], Tensor], names: Sequence[str], output_transform: Optional[Callable[[Tensor], Tensor]]
) -> OutputsFn:
    """A function from the model's input to the checked outputs of the named layers, in order.

    Only the model's own output (``[""]``) needs no ``nn.Module``: any callable will do.
    """
    modules = {} if list(names) == [MODEL_OUTPUT] else _resolve_modules(model, names)

    def f(x: Tensor) -> Tuple[Tensor, ...]:
        if not modules:
            return (model_output(model, x, output_transform),)
        out, captured = _run_capturing(model, modules, x)  # type: ignore[arg-type]
        results: List[Tensor] = []
        for name in names:
            if name == MODEL_OUTPUT:
                value = out if output_transform is None else output_transform(out)
                results.append(checked_output(value, x.shape[0]))
                continue
            if name not in captured:
                raise InputError(f"The layer {name!r} was not called by the model's forward.")
            results.append(checked_output(captured[name], x.shape[0], what=f"layer {name!r}"))
        return tuple(results)

    return f


def _analysed(options: RowOptions, layers: Optional[Mapping[str, Optional[GroupAction]]]) -> Dict[str, Any]:
    """The analysed outputs: the checked ``layers``, or the model's own output with ``options.output_action``."""
    return dict(layers) if layers is not None else {MODEL_OUTPUT: options.output_action}


def batch_rows(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    options: RowOptions,
    layers: Optional[Mapping[str, Optional[GroupAction]]] = None,
) -> BatchRows:
    """The rows of one batch for every analysed output, from one pass.

    Args:
        model: The network (an ``nn.Module`` when ``layers`` name submodules).
        x: A batch of inputs.
        options: How rows are formed.
        layers: Checked layers (:func:`check_layers`), or ``None`` for the model's own output.
    """
    outputs = _analysed(options, layers)
    return outputs_rows(outputs_function(model, list(outputs), options.output_transform), x, outputs, options)


def rows_per_sample(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    options: RowOptions,
    layers: Optional[Mapping[str, Optional[GroupAction]]] = None,
) -> Dict[str, int]:
    """Rows per sample of each analysed output, from one plain forward pass (no derivative) on ``x``."""
    outputs = _analysed(options, layers)
    fn = outputs_function(model, list(outputs), options.output_transform)
    components = outputs_rows_per_sample(fn, x, outputs)
    return {name: options.rows_per_output(k) for name, k in components.items()}


def pass_footprint(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    options: RowOptions,
    layers: Optional[Mapping[str, Optional[GroupAction]]] = None,
) -> PassFootprint:
    """What one sample costs in a derivative pass, per sample of ``x`` (a sample or two is enough).

    Two plain passes over ``x``: one with gradients, counting what autograd keeps for the backward
    pass (:func:`~liegg_lightning.functional.footprint.activation_bytes`), one without, for the rows.
    """
    outputs = _analysed(options, layers)
    fn = outputs_function(model, list(outputs), options.output_transform)
    count = max(x.shape[0], 1)
    saved = saved_storages(fn, x, module_storages(model))
    rows = sum(rows_per_sample(model, x, options, layers).values())
    return PassFootprint(
        -(-sum(saved.values()) // count), x[0].numel() * x.element_size(), int(rows), x.element_size(),
        -(-max(saved.values(), default=0) // count),
    )


def layer_rows(
    model: nn.Module,
    x: Tensor,
    action: GroupAction,
    layers: Layers,
    *,
    output_mode: OutputMode = "jacobian",
    num_projections: Optional[int] = None,
    generator: Any = None,
    output_transform: Optional[Callable[[Tensor], Tensor]] = None,
    derivative: str = "auto",
    output_action: Optional[GroupAction] = None,
) -> Dict[str, Tensor]:
    """Polarization rows ``name -> (B, R_l, m)`` (float64) of several layers of ``model`` from one pass.

    Args:
        model: The network (a module: layers are named as in its ``named_modules()``).
        x: A batch of inputs; validated against ``action``.
        action: How the algebra acts on the network's input.
        layers: Submodule names, or ``name -> output action`` (``None``: invariance); ``""`` is the
            model's own output (after ``output_transform``).
        output_mode: ``"jacobian"``, ``"sum"`` or ``"random"``, for every layer.
        num_projections: Projections for ``"random"`` (drawn per layer, in the order of ``layers``).
        generator: Random generator for ``"random"``.
        output_transform: Applied to the model's output (the layer ``""``) only.
        derivative: ``"forward"`` (one JVP per basis element through the whole network, all layers
            at once), ``"reverse"`` (one forward pass, then each layer's backward passes) or
            ``"auto"`` (whichever needs fewer passes, from a plain forward pass's output sizes).
        output_action: The output action of layers given as a list.

    Returns:
        The rows of each layer, in the order of ``layers``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from liegg_lightning import VectorAction
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> rows = layer_rows(net, torch.randn(4, 3), VectorAction(dim=3), ["0", "1", ""])
        >>> {name: tuple(r.shape) for name, r in rows.items()}
        {'0': (4, 8, 9), '1': (4, 8, 9), '': (4, 1, 9)}
    """
    options = RowOptions(
        action, output_mode, num_projections, output_transform, output_action, derivative,  # type: ignore[arg-type]
        generator,
    )
    return batch_rows(model, x, options, check_layers(action, layers, output_action)).rows
