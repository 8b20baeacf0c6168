"""Rows of the network polarization matrix: derivatives of a network contracted with tangents.

Pure functions. The derivative pass is safe inside Lightning's validation and test loops: the
input is cloned inside ``inference_mode(False)`` + ``enable_grad()``, derivatives come from
``torch.autograd.grad`` or ``torch.func`` (never ``.backward()``, so parameter ``.grad`` is never
touched) and autocast is switched off.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Literal, Optional

import torch
from torch import Tensor

from liegg_lightning._errors import InputError
from liegg_lightning.actions import GroupAction

__all__ = ["input_gradients", "forward_rows", "polarization_rows"]

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


def _flat_output(model: Callable[[Tensor], Tensor], x: Tensor, output_transform: Optional[Callable]) -> Tensor:
    out = model(x)
    if output_transform is not None:
        out = output_transform(out)
    if not isinstance(out, Tensor):
        raise InputError(
            f"Expected the model (after `output_transform`) to return a Tensor, got {type(out).__name__}; "
            "pass `output_transform` to pick the tensor to analyse."
        )
    if out.ndim == 0 and x.shape[0] == 1:
        return out.reshape(1, 1)  # a `(B,)` output squeezed at batch size 1
    if out.ndim == 0 or out.shape[0] != x.shape[0]:
        raise InputError(
            f"Expected the model output to be batch first with batch size {x.shape[0]}, got shape {tuple(out.shape)}."
        )
    return out.reshape(out.shape[0], -1)  # (B,) is one output


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
    with derivative_context(x.device):
        xg = x.detach().clone().requires_grad_(True)
        out = _flat_output(model, xg, output_transform)
        if output_mode == "sum":
            projections = torch.ones(1, out.shape[1], dtype=out.dtype, device=out.device)
        elif output_mode == "random":
            projections = _projection_matrix(out.shape[1], num_projections, generator).to(out.device, out.dtype)
        elif output_mode == "jacobian":
            projections = None
        else:
            raise ValueError(f"Expected `output_mode` to be one of {', '.join(OUTPUT_MODES)}, got {output_mode!r}.")
        if projections is None and out.shape[1] == 1:
            projections = torch.ones(1, 1, dtype=out.dtype, device=out.device)
        if projections is not None:
            if projections.shape[0] == 1:
                proj = out @ projections[0]
                (grad,) = torch.autograd.grad(proj.sum(), xg)
                return grad.unsqueeze(1)
            cotangents = projections[:, None, :].expand(-1, out.shape[0], -1)
        else:
            eye = torch.eye(out.shape[1], dtype=out.dtype, device=out.device)
            cotangents = eye[:, None, :].expand(-1, out.shape[0], -1)
        return _batched_vjp(out, xg, cotangents).transpose(0, 1)


def _batched_vjp(out: Tensor, xg: Tensor, cotangents: Tensor) -> Tensor:
    """``(K, B, *in)`` gradients of ``<cotangents[k], out>``: one batched backward, or a loop.

    On the CPU a loop of backward passes measured faster than the vmap-batched one
    (benchmarks/README.md); elsewhere the batched pass is tried first.
    """
    if out.device.type == "cpu":
        return torch.stack([torch.autograd.grad(out, xg, grad_outputs=c, retain_graph=True)[0] for c in cotangents])
    try:
        (grads,) = torch.autograd.grad(out, xg, grad_outputs=cotangents, is_grads_batched=True, retain_graph=True)
        return grads
    except (RuntimeError, NotImplementedError):
        # some ops have no batching rule: fall back to one backward pass per projection
        return torch.stack([torch.autograd.grad(out, xg, grad_outputs=c, retain_graph=True)[0] for c in cotangents])


def forward_rows(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    action: GroupAction,
    *,
    output_mode: OutputMode = "jacobian",
    num_projections: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    output_transform: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tensor:
    """Rows ``(B, K, m)`` by forward mode: one Jacobian-vector product per basis tangent."""
    # forward mode needs no backward graph: no_grad (inside inference_mode(False)) skips building one
    with derivative_context(x.device), torch.no_grad():
        xd = x.detach().clone()
        tangents = action.tangents(xd).to(xd.dtype)

        def f(inp: Tensor) -> Tensor:
            return _flat_output(model, inp, output_transform)

        def jvp_one(t: Tensor) -> Tensor:
            return torch.func.jvp(f, (xd,), (t,))[1]

        try:
            jvps = torch.func.vmap(jvp_one, in_dims=1)(tangents)  # (m, B, K)
        except (RuntimeError, NotImplementedError, ValueError):
            jvps = torch.stack([jvp_one(tangents[:, i]) for i in range(tangents.shape[1])])
        rows = jvps.permute(1, 2, 0).to(float64_device(jvps.device)).to(torch.float64)  # (B, K, m)
        if output_mode == "jacobian":
            return rows
        if output_mode == "sum":
            return rows.sum(1, keepdim=True)
        if output_mode == "random":
            z = _projection_matrix(rows.shape[1], num_projections, generator).to(rows.device)
            return torch.einsum("rk,bkm->brm", z, rows)
        raise ValueError(f"Expected `output_mode` to be one of {', '.join(OUTPUT_MODES)}, got {output_mode!r}.")


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
) -> Tensor:
    """Polarization rows ``(B, K, m)`` in float64 for a batch of inputs.

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

    Example:
        >>> import torch
        >>> from liegg_lightning import VectorAction
        >>> f = lambda x: (x ** 2).sum(1, keepdim=True)  # invariant to so(3)
        >>> polarization_rows(f, torch.randn(4, 3), VectorAction(dim=3)).shape
        torch.Size([4, 1, 9])
    """
    _check_options(action, output_mode, num_projections, derivative, output_transform)
    action.validate_input(x)
    kwargs = {"output_mode": output_mode, "num_projections": num_projections, "generator": generator,
              "output_transform": output_transform}
    if derivative == "forward":
        return forward_rows(model, x, action, **kwargs)  # type: ignore[arg-type]
    grads = input_gradients(model, x, **kwargs)  # type: ignore[arg-type]
    with torch.inference_mode(False):
        dev = float64_device(x.device)
        return action.rows(x.detach().to(dev).clone(), grads.detach().to(dev))
