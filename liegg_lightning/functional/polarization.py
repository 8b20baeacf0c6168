"""Rows of the network polarization matrix: derivatives of a network contracted with tangents.

Pure functions. The derivative pass is safe inside Lightning's validation and test loops: the
input is cloned inside ``inference_mode(False)`` + ``enable_grad()``, derivatives come from
``torch.autograd.grad`` or ``torch.func`` (never ``.backward()``, so parameter ``.grad`` is never
touched) and autocast is switched off.

Equivariance: with an ``output_action`` the rows are those of the Lie derivative of the map,
``J_F(x) A_in,i(x) - A_out,i(F(x))`` (output component ``k``, basis element ``i``), which vanish
for every ``h`` the map is *equivariant* to; without one they are ``J_F(x) A_in,i(x)``
(invariance), as in LieGG.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Literal, Optional, Tuple

import torch
from torch import Tensor

from liegg_lightning._errors import InputError
from liegg_lightning.actions import GroupAction

__all__ = ["input_gradients", "forward_rows", "output_tangents", "polarization_rows"]

OutputMode = Literal["jacobian", "sum", "random"]
DerivativeMode = Literal["auto", "reverse", "forward"]
OUTPUT_MODES = ("jacobian", "sum", "random")
DERIVATIVE_MODES = ("auto", "reverse", "forward")


def _check_options(
    action: GroupAction,
    output_mode: str,
    num_projections: Optional[int],
    derivative: str,
    output_transform: Optional[Callable[[Tensor], Tensor]],
) -> None:
    """The one check of the derivative options, shared by the metric, ``analyze`` and the functions here."""
    if not isinstance(action, GroupAction):
        raise ValueError(
            "Expected `action` to be a GroupAction (VectorAction, ImageAction or TangentAction), "
            f"got {type(action).__name__}."
        )
    if output_mode not in OUTPUT_MODES:
        raise ValueError(f"Expected `output_mode` to be one of {', '.join(OUTPUT_MODES)}, got {output_mode!r}.")
    if output_mode == "random" and (
        not isinstance(num_projections, int) or isinstance(num_projections, bool) or num_projections < 1
    ):
        raise ValueError(
            f"Expected a positive int `num_projections` with output_mode='random', got {num_projections!r}."
        )
    if derivative not in DERIVATIVE_MODES:
        raise ValueError(f"Expected `derivative` to be one of {', '.join(DERIVATIVE_MODES)}, got {derivative!r}.")
    if output_transform is not None and not callable(output_transform):
        raise ValueError(f"Expected `output_transform` to be callable or None, got {output_transform!r}.")


def _check_output_action(action: GroupAction, output_action: Optional[GroupAction]) -> None:
    """An output action must be a GroupAction with the input action's generators (shape and number)."""
    if output_action is None:
        return
    if not isinstance(output_action, GroupAction):
        raise ValueError(
            "Expected `output_action` to be None (invariance) or a GroupAction (VectorAction, ImageAction or "
            f"TangentAction), got {type(output_action).__name__}."
        )
    if (
        tuple(output_action.generator_shape) != tuple(action.generator_shape)
        or output_action.num_generators != action.num_generators
        or output_action.homogeneous != action.homogeneous
    ):
        raise ValueError(
            f"Expected `output_action` to share the input action's generators: {action!r} has generator shape "
            f"{tuple(action.generator_shape)} (m={action.num_generators}{_homogeneous(action)}), "
            f"but {output_action!r} has {tuple(output_action.generator_shape)} (m={output_action.num_generators}"
            f"{_homogeneous(output_action)})."
        )


def _homogeneous(action: GroupAction) -> str:
    return ", homogeneous" if action.homogeneous else ""


def float64_device(device: torch.device) -> torch.device:
    """Where float64 rows can be formed: the device itself, or the CPU where it has no float64 (MPS)."""
    return torch.device("cpu") if device.type == "mps" else device


@contextlib.contextmanager
def derivative_context(device: torch.device) -> Iterator[None]:
    """Gradients on, inference mode off, autocast off: what a derivative pass inside a hook needs."""
    autocast = (
        torch.autocast(device_type=device.type, enabled=False)
        if device.type in ("cpu", "cuda", "xpu", "mps")
        else contextlib.nullcontext()
    )
    with torch.inference_mode(False), torch.enable_grad(), autocast:
        yield


def _checked_output(out: object, batch_size: int, what: str = "the model (after `output_transform`)") -> Tensor:
    """A batch-first output tensor (``(B, ...)``, at least one axis), or :class:`InputError`."""
    if not isinstance(out, Tensor):
        raise InputError(
            f"Expected {what} to return a Tensor, got {type(out).__name__}; "
            "pass `output_transform` to pick the tensor to analyse."
        )
    if out.ndim == 0 and batch_size == 1:
        return out.reshape(1)  # a `(B,)` output squeezed at batch size 1
    if out.ndim == 0 or out.shape[0] != batch_size:
        raise InputError(
            f"Expected the output of {what} to be batch first with batch size {batch_size}, "
            f"got shape {tuple(out.shape)}."
        )
    return out


def _model_output(model: Callable[[Tensor], Tensor], x: Tensor, output_transform: Optional[Callable]) -> Tensor:
    """The model's output after ``output_transform``, checked, in its own shape ``(B, ...)``."""
    out = model(x)
    if output_transform is not None:
        out = output_transform(out)
    return _checked_output(out, x.shape[0])


def _flat_output(model: Callable[[Tensor], Tensor], x: Tensor, output_transform: Optional[Callable]) -> Tensor:
    return _model_output(model, x, output_transform).reshape(x.shape[0], -1)  # (B,) is one output


def output_tangents(output_action: GroupAction, out: Tensor, *, what: str = "the model output") -> Tensor:
    """Tangents of the output action at the outputs, flattened like the rows: ``(B, K, m)`` in float64.

    Args:
        output_action: How the algebra acts on the output.
        out: The outputs ``(B, ...)`` (the model's, or an analysed layer's), in their own shape.
        what: Names the output in the error raised when it does not fit ``output_action``.

    Raises:
        InputError: When ``out`` does not have a shape ``output_action`` acts on.

    Example:
        >>> import torch
        >>> from liegg_lightning import VectorAction
        >>> output_tangents(VectorAction(dim=3), torch.randn(4, 3)).shape
        torch.Size([4, 3, 9])
    """
    try:
        output_action.validate_input(out)
    except InputError as err:
        # the action's own message speaks of its input: here that input is an output
        detail = str(err).replace(" input", " output")
        raise InputError(
            f"{what[:1].upper()}{what[1:]} of shape {tuple(out.shape)} does not fit `output_action`: {detail}"
        ) from None
    with torch.inference_mode(False):
        o64 = out.detach().to(float64_device(out.device)).to(torch.float64).clone()
        t = output_action.tangents(o64).to(torch.float64)  # (B, m, *out.shape[1:])
    return t.flatten(2).transpose(1, 2)


def _draw_projections(
    output_mode: str, num_outputs: int, num_projections: Optional[int], generator: Optional[torch.Generator]
) -> Optional[Tensor]:
    """The ``(R, K)`` float64 (CPU) output projections of a mode; ``None`` for ``"jacobian"`` (every component)."""
    if output_mode == "sum":
        return torch.ones(1, num_outputs, dtype=torch.float64)
    if output_mode == "random":
        return _projection_matrix(num_outputs, num_projections, generator)
    if output_mode == "jacobian":
        return None
    raise ValueError(f"Expected `output_mode` to be one of {', '.join(OUTPUT_MODES)}, got {output_mode!r}.")


def _project(rows: Tensor, projections: Optional[Tensor]) -> Tensor:
    """Rows ``(B, K, m)`` of every output component projected to ``(B, R, m)`` (unchanged for ``None``)."""
    if projections is None:
        return rows
    return torch.einsum("rk,bkm->brm", projections.to(rows.device, rows.dtype), rows)


def _projection_matrix(
    num_outputs: int, num_projections: Optional[int], generator: Optional[torch.Generator]
) -> Tensor:
    if num_projections is None or num_projections < 1:
        raise ValueError(f"Expected a positive `num_projections` for output_mode='random', got {num_projections!r}.")
    # z / sqrt(r): E[z^T z] / r = I, so sum_j (z_j J)^T (z_j J) / r estimates J^T J without bias
    z = torch.randn(num_projections, num_outputs, generator=generator, dtype=torch.float64)
    return z / math.sqrt(num_projections)


def _rows_per_sample(output_mode: str, num_outputs: int, num_projections: Optional[int]) -> int:
    """How many polarization rows one sample contributes."""
    if output_mode == "jacobian":
        return num_outputs
    if output_mode == "sum":
        return 1
    return int(num_projections or 1)


def input_gradients(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    output_mode: OutputMode = "jacobian",
    num_projections: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    output_transform: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tensor:
    """Per-sample input gradients ``(B, K, *x.shape[1:])`` of the (projected) outputs.

    ``"jacobian"`` gives one gradient per output component, ``"sum"`` the gradient of the summed
    outputs, ``"random"`` the gradients of ``num_projections`` Gaussian output projections scaled
    so that their Gram matrix is an unbiased estimate of the Jacobian's. Samples must not interact
    inside the model (e.g. no batch norm in training mode).
    """
    grads, _, _ = _reverse_pass(model, x, output_mode, num_projections, generator, output_transform, None)
    return grads


def _reverse_pass(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    output_mode: str,
    num_projections: Optional[int],
    generator: Optional[torch.Generator],
    output_transform: Optional[Callable[[Tensor], Tensor]],
    output_action: Optional[GroupAction],
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Input gradients, output tangents and projections from one forward pass.

    Returns the gradients ``(B, R, *x.shape[1:])``, the output action's tangents ``(B, K, m)`` (or
    ``None``) and the projections ``(R, K)`` (``None`` for every component). The output is checked
    against ``output_action`` before any backward pass runs.
    """
    with derivative_context(x.device):
        xg = x.detach().clone().requires_grad_(True)
        out = _model_output(model, xg, output_transform)
        out_tangents = None if output_action is None else output_tangents(output_action, out)
        flat = out.reshape(out.shape[0], -1)
        projections = _draw_projections(output_mode, flat.shape[1], num_projections, generator)
        grads = output_gradients(flat, xg, projections, retain_graph=False)
    return grads, out_tangents, projections


def output_gradients(out: Tensor, xg: Tensor, projections: Optional[Tensor], *, retain_graph: bool = True) -> Tensor:
    """Gradients ``(B, R, *xg.shape[1:])`` of the projected outputs ``(B, K)`` with respect to ``xg``.

    ``projections`` ``(R, K)`` (float64, any device) or ``None`` for one gradient per component. An
    output that does not depend on ``xg`` has zero gradients.
    """
    num = out.shape[1] if projections is None else projections.shape[0]
    if not out.requires_grad:
        return torch.zeros(xg.shape[0], num, *xg.shape[1:], dtype=xg.dtype, device=xg.device)
    if projections is None and out.shape[1] == 1:
        projections = torch.ones(1, 1, dtype=torch.float64)
    if projections is not None:
        proj_t = projections.to(out.device, out.dtype)
        if proj_t.shape[0] == 1:
            (grad,) = torch.autograd.grad((out @ proj_t[0]).sum(), xg, retain_graph=retain_graph, allow_unused=True)
            grad = torch.zeros_like(xg) if grad is None else grad
            return grad.unsqueeze(1)
        cotangents = proj_t[:, None, :].expand(-1, out.shape[0], -1)
    else:
        eye = torch.eye(out.shape[1], dtype=out.dtype, device=out.device)
        cotangents = eye[:, None, :].expand(-1, out.shape[0], -1)
    return _batched_vjp(out, xg, cotangents).transpose(0, 1)


def _batched_vjp(out: Tensor, xg: Tensor, cotangents: Tensor) -> Tensor:
    """``(K, B, *in)`` gradients of ``<cotangents[k], out>``: one batched backward, or a loop.

    On the CPU a loop of backward passes measured faster than the vmap-batched one
    (benchmarks/README.md); elsewhere the batched pass is tried first.
    """

    def one(c: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(out, xg, grad_outputs=c, retain_graph=True, allow_unused=True)
        return torch.zeros_like(xg) if g is None else g

    if out.device.type == "cpu":
        return torch.stack([one(c) for c in cotangents])
    try:
        (grads,) = torch.autograd.grad(out, xg, grad_outputs=cotangents, is_grads_batched=True, retain_graph=True)
        return grads
    except (RuntimeError, NotImplementedError):
        # some ops have no batching rule: fall back to one backward pass per projection
        return torch.stack([one(c) for c in cotangents])


def jvp_through(
    f: Callable[[Tensor], Tuple[Tensor, ...]], x: Tensor, tangents: Tensor
) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
    """Primal outputs ``(B, ...)`` and their tangents ``(m, B, ...)`` of ``f`` along each ``tangents[:, i]``.

    ``f`` returns a tuple of tensors. One Jacobian-vector product per basis element, vmapped when
    the model allows it (a loop otherwise). Call it under :func:`derivative_context` and ``no_grad``.
    """

    def jvp_one(t: Tensor) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        return torch.func.jvp(f, (x,), (t,))  # type: ignore[return-value]

    try:
        primals, jvps = torch.func.vmap(jvp_one, in_dims=1)(tangents)
        # unbatched primal outputs come back expanded over the m tangents: keep one copy
        return tuple(p[0] for p in primals), tuple(jvps)  # type: ignore[return-value]
    except (RuntimeError, NotImplementedError, ValueError):
        results = [jvp_one(tangents[:, i]) for i in range(tangents.shape[1])]
        primals = results[0][0]
        return tuple(primals), tuple(torch.stack([r[1][j] for r in results]) for j in range(len(primals)))


def _rows_from_jvps(
    jvp: Tensor,
    out: Tensor,
    output_action: Optional[GroupAction],
    projections: Optional[Tensor],
    what: str = "the model output",
) -> Tensor:
    """Rows ``(B, R, m)`` from the tangents ``(m, B, ...)`` of an output ``(B, ...)``.

    The output action's tangents are subtracted when there is one, then the rows are projected.
    """
    flat = jvp.reshape(jvp.shape[0], jvp.shape[1], -1)
    rows = flat.permute(1, 2, 0).to(float64_device(flat.device)).to(torch.float64)  # (B, K, m)
    if output_action is not None:
        rows = rows - output_tangents(output_action, out, what=what).to(rows.device)
    return _project(rows, projections)


def forward_rows(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    action: GroupAction,
    *,
    output_mode: OutputMode = "jacobian",
    num_projections: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    output_transform: Optional[Callable[[Tensor], Tensor]] = None,
    output_action: Optional[GroupAction] = None,
) -> Tensor:
    """Rows ``(B, K, m)`` by forward mode: one Jacobian-vector product per basis tangent.

    With an ``output_action``, the output action's tangents at the model output are subtracted
    (equivariance rows); see :func:`polarization_rows` for the arguments.
    """
    # forward mode needs no backward graph: no_grad (inside inference_mode(False)) skips building one
    with derivative_context(x.device), torch.no_grad():
        xd = x.detach().clone()
        tangents = action.tangents(xd).to(xd.dtype)

        def f(inp: Tensor) -> Tuple[Tensor]:
            return (_model_output(model, inp, output_transform),)

        (out,), (jvp,) = jvp_through(f, xd, tangents)
        projections = _draw_projections(output_mode, out[0].numel(), num_projections, generator)
        return _rows_from_jvps(jvp, out, output_action, projections)


def _resolve_derivative(derivative: str, action: GroupAction, rows_per_sample: int) -> str:
    """``"forward"`` when fewer basis tangents than reverse passes are needed, else ``"reverse"``.

    ``rows_per_sample`` is the number of reverse passes (``K``): the second axis of the rows.
    """
    if derivative != "auto":
        return derivative
    return "forward" if action.num_generators < rows_per_sample else "reverse"


def polarization_rows(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    action: GroupAction,
    *,
    output_mode: OutputMode = "jacobian",
    num_projections: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    output_transform: Optional[Callable[[Tensor], Tensor]] = None,
    derivative: DerivativeMode = "reverse",
    output_action: Optional[GroupAction] = None,
) -> Tensor:
    """Polarization rows ``(B, K, m)`` in float64 for a batch of inputs.

    Without ``output_action`` (invariance) ``rows[b, k, i] = (J_F(x_b) A_i(x_b))_k``; with one
    (equivariance) ``rows[b, k, i] = (J_F(x_b) A_i(x_b))_k - (A_out,i(F(x_b)))_k``, ``k`` running over
    the flattened output components. ``"sum"`` and ``"random"`` project both terms alike.

    Args:
        model: Any callable mapping a batch ``(B, ...)`` to outputs ``(B, ...)``.
        x: The batch of inputs; validated against ``action``.
        action: How the algebra acts on ``x``.
        output_mode: ``"jacobian"`` (a row per output component), ``"sum"`` (the original
            LieGG's summed output) or ``"random"`` (``num_projections`` Gaussian projections).
        num_projections: Projections for ``"random"``.
        generator: Random generator for ``"random"`` (the global RNG is never consumed when given).
        output_transform: Applied to the model output before differentiating.
        derivative: ``"reverse"`` (gradients, then the action's closed form), ``"forward"``
            (one JVP per basis tangent), or ``"auto"``: reverse for a single call, since the output
            size is known only after a pass (:class:`~liegg_lightning.LieGGMetric` picks the
            cheaper mode for its later batches from the first one's rows).
        output_action: How the algebra acts on the output (after ``output_transform``), with the
            generator shape of ``action``; ``None`` measures invariance. The output is checked
            against it (:class:`~liegg_lightning._errors.InputError` naming the expected shape)
            before any backward pass.

    Example:
        >>> import torch
        >>> from liegg_lightning import VectorAction
        >>> f = lambda x: (x ** 2).sum(1, keepdim=True)  # invariant to so(3)
        >>> polarization_rows(f, torch.randn(4, 3), VectorAction(dim=3)).shape
        torch.Size([4, 1, 9])
    """
    _check_options(action, output_mode, num_projections, derivative, output_transform)
    _check_output_action(action, output_action)
    action.validate_input(x)
    if derivative == "forward":
        return forward_rows(
            model, x, action, output_mode=output_mode, num_projections=num_projections, generator=generator,
            output_transform=output_transform, output_action=output_action,
        )
    grads, out_tangents, projections = _reverse_pass(
        model, x, output_mode, num_projections, generator, output_transform, output_action
    )
    return _rows_from_gradients(x, grads, action, out_tangents, projections)


def _rows_from_gradients(
    x: Tensor, grads: Tensor, action: GroupAction, out_tangents: Optional[Tensor], projections: Optional[Tensor]
) -> Tensor:
    """Reverse-mode rows ``(B, R, m)``: the action's closed form on the gradients.

    Minus the projected output tangents ``(B, K, m)`` when there are any.
    """
    with torch.inference_mode(False):
        dev = float64_device(x.device)
        rows = action.rows(x.detach().to(dev).clone(), grads.detach().to(dev))
        if out_tangents is not None:
            rows = rows - _project(out_tangents.to(rows.device), projections)
        return rows
