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
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from liegg_lightning._errors import InputError
from liegg_lightning.actions import GroupAction
from liegg_lightning.functional.polarization import (
    OutputMode,
    _check_options,
    _check_output_action,
    _checked_output,
    _draw_projections,
    _rows_from_gradients,
    _rows_from_jvps,
    _rows_per_sample,
    derivative_context,
    jvp_through,
    output_gradients,
    output_tangents,
)

__all__ = ["MODEL_OUTPUT", "check_layers", "layer_rows", "layers_derivative"]

#: The name of the model's own output (after ``output_transform``) among the analysed layers.
MODEL_OUTPUT = ""

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
            _check_output_action(action, act)
        except ValueError as err:
            where = "the model output" if name == MODEL_OUTPUT else f"layer {name!r}"
            raise ValueError(f"For {where}: {err}") from None
        out[name] = act
    return out


def _describe(name: str) -> str:
    return "the model output" if name == MODEL_OUTPUT else f"the output of layer {name!r}"


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


def _capturing(
    model: nn.Module, names: Sequence[str], output_transform: Optional[Callable[[Tensor], Tensor]]
) -> Callable[[Tensor], Tuple[Tensor, ...]]:
    """A function from the model's input to the outputs of the named layers, in order.

    Forward hooks record each layer's output (its last call, for a module called more than once)
    during one forward pass of the whole model; they are removed when the pass ends.
    """
    modules = _resolve_modules(model, names)

    def f(x: Tensor) -> Tuple[Tensor, ...]:
        captured: Dict[str, Any] = {}
        handles = []
        try:
            for name, module in modules.items():
                handles.append(
                    module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
                )
            out = model(x)
        finally:
            for handle in handles:
                handle.remove()
        results: List[Tensor] = []
        for name in names:
            if name == MODEL_OUTPUT:
                value = out if output_transform is None else output_transform(out)
                results.append(_checked_output(value, x.shape[0]))
                continue
            if name not in captured:
                raise InputError(f"The layer {name!r} was not called by the model's forward.")
            results.append(_checked_output(captured[name], x.shape[0], what=f"layer {name!r}"))
        return tuple(results)

    return f


def layers_derivative(derivative: str, action: GroupAction, rows_per_sample: Mapping[str, int]) -> str:
    """``"forward"`` when ``m`` JVPs are fewer than the reverse passes of all layers together, else ``"reverse"``.

    Args:
        derivative: ``"auto"``, ``"forward"`` or ``"reverse"`` (the last two are returned as they are).
        action: The input action (``m`` basis tangents).
        rows_per_sample: Rows per sample (reverse passes) of each layer.
    """
    if derivative != "auto":
        return derivative
    return "forward" if action.num_generators < sum(rows_per_sample.values()) else "reverse"


def layer_rows_per_sample(
    model: nn.Module,
    x: Tensor,
    layers: Mapping[str, Optional[GroupAction]],
    *,
    output_mode: OutputMode = "jacobian",
    num_projections: Optional[int] = None,
    output_transform: Optional[Callable[[Tensor], Tensor]] = None,
) -> Dict[str, int]:
    """Rows per sample of each layer, from one plain forward pass (no derivative) on ``x``."""
    f = _capturing(model, list(layers), output_transform)
    with derivative_context(x.device), torch.no_grad():
        outs = f(x.detach())
    return {
        name: _rows_per_sample(output_mode, out[0].numel(), num_projections) for name, out in zip(layers, outs)
    }


def layer_rows(
    model: nn.Module,
    x: Tensor,
    action: GroupAction,
    layers: Layers,
    *,
    output_mode: OutputMode = "jacobian",
    num_projections: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
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
    _check_options(action, output_mode, num_projections, derivative, output_transform)
    checked = check_layers(action, layers, output_action)
    action.validate_input(x)
    names = list(checked)
    if derivative == "auto":
        per_sample = layer_rows_per_sample(
            model, x, checked, output_mode=output_mode, num_projections=num_projections,
            output_transform=output_transform,
        )
        derivative = layers_derivative(derivative, action, per_sample)
    f = _capturing(model, names, output_transform)
    rows: Dict[str, Tensor] = {}
    if derivative == "forward":
        with derivative_context(x.device), torch.no_grad():
            xd = x.detach().clone()
            tangents = action.tangents(xd).to(xd.dtype)
            outs, jvps = jvp_through(f, xd, tangents)
            for name, out, jvp in zip(names, outs, jvps):
                projections = _draw_projections(output_mode, out[0].numel(), num_projections, generator)
                rows[name] = _rows_from_jvps(jvp, out, checked[name], projections, what=_describe(name))
        return rows
    with derivative_context(x.device):
        xg = x.detach().clone().requires_grad_(True)
        outs = f(xg)
        # every output is checked against its action before any backward pass
        out_tangents = [
            None if checked[n] is None else output_tangents(checked[n], o, what=_describe(n))  # type: ignore[arg-type]
            for n, o in zip(names, outs)
        ]
        for i, (name, out) in enumerate(zip(names, outs)):
            flat = out.reshape(out.shape[0], -1)
            projections = _draw_projections(output_mode, flat.shape[1], num_projections, generator)
            grads = output_gradients(flat, xg, projections, retain_graph=i < len(names) - 1)
            rows[name] = _rows_from_gradients(x, grads, action, out_tangents[i], projections)
    return rows
