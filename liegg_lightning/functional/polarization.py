"""Rows of the network polarization matrix: derivatives of a network contracted with tangents.

Pure functions. The derivative pass is safe inside Lightning's validation and test loops: the
input is cloned inside ``inference_mode(False)`` + ``enable_grad()``, derivatives come from
``torch.autograd.grad`` or ``torch.func`` (never ``.backward()``, so parameter ``.grad`` is never
touched) and autocast is switched off.

Equivariance: with an ``output_action`` the rows are those of the Lie derivative of the map,
``J_F(x) A_in,i(x) - A_out,i(F(x))`` (output component ``k``, basis element ``i``), which vanish
for every ``h`` the map is *equivariant* to; without one they are ``J_F(x) A_in,i(x)``
(invariance), as in LieGG.

:class:`RowOptions` says how rows are formed; :func:`outputs_rows` forms them for every analysed
output of one pass (the model's, or several layers'); :func:`choose_derivative` is the one rule
for forward against reverse mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from typing import Any, Callable, Dict, Iterator, List, Literal, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from liegg_lightning._checks import is_int
from liegg_lightning._errors import InputError
from liegg_lightning.actions import GroupAction, ImageAction

__all__ = [
    "MODEL_OUTPUT",
    "BatchRows",
    "DisconnectedGraphError",
    "RowOptions",
    "choose_derivative",
    "describe_derivative",
    "forward_rows",
    "input_gradients",
    "output_tangents",
    "outputs_rows",
    "polarization_rows",
]

OutputMode = Literal["jacobian", "sum", "random"]
DerivativeMode = Literal["auto", "reverse", "forward"]
OUTPUT_MODES = ("jacobian", "sum", "random")
DERIVATIVE_MODES = ("auto", "reverse", "forward")

#: The name of the model's own output (after ``output_transform``) among the analysed outputs, as
#: ``named_modules()`` names the root.
MODEL_OUTPUT = ""

#: A function from the network's input to the analysed outputs, in order.
OutputsFn = Callable[[Tensor], Tuple[Tensor, ...]]


@dataclasses.dataclass(frozen=True)
class RowOptions:
    """How polarization rows are formed from a network's outputs; checked once, when made.

    Attributes:
        action: How the candidate algebra acts on the network's input.
        output_mode: ``"jacobian"`` (a row per output component), ``"sum"`` (the original LieGG's
            summed output) or ``"random"`` (``num_projections`` Gaussian output projections).
        num_projections: Projections for ``"random"``.
        output_transform: Applied to the model's output before differentiating (no other layer's).
        output_action: How the algebra acts on the model's output (and on layers given as a list);
            ``None`` measures invariance.
        derivative: ``"reverse"``, ``"forward"`` or ``"auto"`` (:func:`choose_derivative` by count,
            from a plain forward pass's output sizes).
        generator: Random generator for ``"random"`` (the global RNG is never consumed when given).
        tangents_per_pass: Forward mode carries at most this many tangents through the network at
            once (``None``: all ``m``), which bounds its memory (see ``LieGGMetric.pass_budget``).
        rows_per_pass: Reverse mode forms the input gradients of at most this many rows of an
            output at once (``None``: all), which bounds its memory likewise.

    Example:
        >>> from liegg_lightning import VectorAction
        >>> RowOptions(VectorAction(dim=3), output_mode="random", num_projections=2).rows_per_output(10)
        2
    """

    action: GroupAction
    output_mode: OutputMode = "jacobian"
    num_projections: Optional[int] = None
    output_transform: Optional[Callable[[Tensor], Tensor]] = None
    output_action: Optional[GroupAction] = None
    derivative: DerivativeMode = "auto"
    generator: Optional[torch.Generator] = None
    tangents_per_pass: Optional[int] = None
    rows_per_pass: Optional[int] = None

    def __post_init__(self) -> None:
        _check_options(self.action, self.output_mode, self.num_projections, self.derivative, self.output_transform)
        check_output_action(self.action, self.output_action)

    def replace(self, **changes: object) -> RowOptions:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def rows_per_output(self, num_components: int) -> int:
        """How many rows one sample gives from an output of ``num_components`` analysed components."""
        if self.output_mode == "jacobian":
            return num_components
        if self.output_mode == "sum":
            return 1
        return int(self.num_projections or 1)


def _check_options(
    action: GroupAction,
    output_mode: str,
    num_projections: Optional[int],
    derivative: str,
    output_transform: Optional[Callable[[Tensor], Tensor]],
) -> None:
    if not isinstance(action, GroupAction):
        raise ValueError(
            "Expected `action` to be a GroupAction (VectorAction, ImageAction or TangentAction), "
            f"got {type(action).__name__}."
        )
    if output_mode not in OUTPUT_MODES:
        raise ValueError(f"Expected `output_mode` to be one of {', '.join(OUTPUT_MODES)}, got {output_mode!r}.")
    if output_mode == "random":
        _check_num_projections(num_projections)
    if derivative not in DERIVATIVE_MODES:
        raise ValueError(f"Expected `derivative` to be one of {', '.join(DERIVATIVE_MODES)}, got {derivative!r}.")
    if output_transform is not None and not callable(output_transform):
        raise ValueError(f"Expected `output_transform` to be callable or None, got {output_transform!r}.")


def _check_num_projections(num_projections: Optional[int]) -> None:
    if not (is_int(num_projections) and num_projections >= 1):  # type: ignore[operator]
        raise ValueError(
            f"Expected a positive int `num_projections` with output_mode='random', got {num_projections!r}."
        )


def check_output_action(action: GroupAction, output_action: Optional[GroupAction]) -> None:
    """Raise ``ValueError`` unless ``output_action`` is None or a GroupAction with ``action``'s generators."""
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


def choose_derivative(
    requested: str, num_generators: int, rows_per_sample: int, seconds: Optional[Mapping[str, float]] = None
) -> str:
    """The derivative mode to use: the one place that decides forward against reverse mode.

    Reverse mode costs one backward pass per row of a sample, forward mode one Jacobian-vector
    product per basis element, each about a forward pass.

    Args:
        requested: ``"reverse"`` or ``"forward"`` (returned as they are), or ``"auto"``.
        num_generators: ``m``, the forward passes.
        rows_per_sample: The rows one sample gives (all analysed outputs together): the reverse passes.
        seconds: Measured seconds per mode (``inf`` for a mode that failed); with at least one
            finite time, the faster finite mode wins (a tie goes to the count rule's choice).

    Returns:
        ``"forward"`` or ``"reverse"``; without finite measurements, ``"forward"`` exactly when
        ``num_generators < rows_per_sample``.

    Example:
        >>> choose_derivative("auto", 4, 300), choose_derivative("auto", 25, 10)
        ('forward', 'reverse')
        >>> choose_derivative("auto", 4, 300, seconds={"forward": float("inf"), "reverse": 0.2})
        'reverse'
    """
    if requested not in DERIVATIVE_MODES:
        raise ValueError(f"Expected `requested` to be one of {', '.join(DERIVATIVE_MODES)}, got {requested!r}.")
    if requested != "auto":
        return requested
    by_count = "forward" if num_generators < rows_per_sample else "reverse"
    timed = {mode: float(t) for mode, t in (seconds or {}).items() if mode in ("forward", "reverse")}
    finite = {mode: t for mode, t in timed.items() if math.isfinite(t)}
    if not finite:
        return by_count
    fastest = min(finite.values())
    return by_count if finite.get(by_count) == fastest else min(finite, key=finite.__getitem__)


def describe_derivative(mode: str, num_generators: int, rows_per_sample: int, output_mode: str) -> str:
    """The derivative mode in words, with the passes it takes and those the other mode would.

    Example:
        >>> print(describe_derivative("forward", 4, 1000, "jacobian"))
        forward mode: 4 tangent passes a batch (reverse: 1000 backward passes), output_mode='jacobian'
    """
    passes = {"forward": f"{num_generators} tangent pass{'es' if num_generators != 1 else ''}",
              "reverse": f"{rows_per_sample} backward pass{'es' if rows_per_sample != 1 else ''}"}
    other = "reverse" if mode == "forward" else "forward"
    return f"{mode} mode: {passes[mode]} a batch ({other}: {passes[other]}), output_mode={output_mode!r}"


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


@contextlib.contextmanager
def forward_mode_kernels() -> Iterator[None]:
    """Kernels forward-mode AD can go through, for the length of a forward-mode pass.

    Fused attention has no forward-mode derivative (``F.scaled_dot_product_attention``'s flash
    kernel on the CPU, the fused fast path of ``nn.TransformerEncoderLayer`` and
    ``nn.MultiheadAttention`` in eval mode); its math form, the same product written out, has one.
    Torch versions without these switches (before 2.3) run the pass as it is.
    """
    mha = getattr(torch.backends, "mha", None)
    fastpath = mha.get_fastpath_enabled() if mha is not None else None
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        math_kernel: Any = sdpa_kernel([SDPBackend.MATH])
    except ImportError:
        math_kernel = contextlib.nullcontext()
    if mha is not None:
        mha.set_fastpath_enabled(False)
    try:
        with math_kernel:
            yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(fastpath)


class DisconnectedGraphError(RuntimeError):
    """The input derivative is exactly zero though the output moves with the input: the graph is cut.

    ``torch.no_grad()`` inside ``forward`` cuts it for reverse mode, ``.detach()`` (or a step such
    as rounding) for both modes. Reading it as a symmetry would report every generator (nullity m).
    """


#: Output components moving less than this share of their largest value are taken as rounding.
_MOVE_RTOL = 1e-5
#: The finite-difference step along the tangents, as a share of the input's largest value.
_MOVE_STEP = 1e-3


def moving_outputs(outputs_fn: OutputsFn, x: Tensor, action: GroupAction, names: Sequence[str]) -> List[str]:
    """The outputs among ``names`` that change when the input takes a small step along the algebra.

    A finite difference of the input along one random combination of the tangents (a fixed seed:
    no global random state is drawn), independent of any derivative: what a zero derivative is
    checked against.

    Args:
        outputs_fn: From the input to the outputs, in the order of ``names``.
        x: A batch of inputs.
        action: How the algebra acts on ``x``.
        names: The names of all outputs of ``outputs_fn``, in order.

    Returns:
        The names of the outputs that move by more than rounding.
    """
    with derivative_context(x.device), torch.no_grad():
        x0 = x.detach().clone()
        tangents = action.tangents(x0).to(x0.dtype)  # (B, m, ...)
        coefficients = torch.randn(tangents.shape[1], generator=torch.Generator().manual_seed(0))
        direction = torch.einsum("m,bm...->b...", coefficients.to(tangents), tangents)
        largest = float(direction.abs().amax())
        if not math.isfinite(largest) or largest == 0.0:
            return []
        step = _MOVE_STEP * max(float(x0.abs().amax()), 1.0) / largest
        before, after = outputs_fn(x0), outputs_fn(x0 + step * direction)
    return [name for name, b, a in zip(names, before, after)
            if float((a - b).abs().amax()) > _MOVE_RTOL * float(b.abs().amax()) + 1e-30]


def _check_connected(
    outputs_fn: OutputsFn, x: Tensor, action: GroupAction, names: Sequence[str], zero: Sequence[str], mode: str
) -> None:
    """Raise :class:`DisconnectedGraphError` when an output in ``zero`` (all derivatives 0) moves all the same."""
    if not zero:
        return
    cut = [name for name in moving_outputs(outputs_fn, x, action, names) if name in zero]
    if cut:
        raise DisconnectedGraphError(
            f"In {mode} mode the derivative of {describe(cut[0])} along every generator is exactly zero, yet it "
            "changes when the input moves along the algebra (a finite difference): the graph from the input to "
            "the output is cut inside the model (`torch.no_grad()`, `.detach()`, rounding), not a symmetry."
        )


def checked_output(out: object, batch_size: int, what: str = "the model (after `output_transform`)") -> Tensor:
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


def model_output(model: Callable[[Tensor], Tensor], x: Tensor, output_transform: Optional[Callable]) -> Tensor:
    """The model's output after ``output_transform``, checked, in its own shape ``(B, ...)``."""
    out = model(x)
    if output_transform is not None:
        out = output_transform(out)
    return checked_output(out, x.shape[0])


def describe(name: str) -> str:
    """How errors name an analysed output."""
    return "the model output" if name == MODEL_OUTPUT else f"the output of layer {name!r}"


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


class _Components(NamedTuple):
    """Which flattened components of one output give the report's rows, and which form its border ring."""

    kept: Optional[Tensor]  #: (K,) bool, or None for every component
    ring: Optional[Tensor]  #: (K,) bool, or None where no ring is tracked


def tracks_border(output_action: Optional[GroupAction], output_mode: str) -> bool:
    """Whether an output's border ring gets rows of its own (for ``border_share``).

    Only an image's pixels have a border, and only rows of single components split exactly into
    the ring's and the rest's: projections mix them.
    """
    return isinstance(output_action, ImageAction) and output_mode == "jacobian"


def _components(output_action: Optional[GroupAction], out: Tensor, options: RowOptions, what: str) -> _Components:
    """The output action's border split of ``out`` ``(B, ...)``; the ring only where :func:`tracks_border`."""
    if not isinstance(output_action, ImageAction):
        return _Components(None, None)
    try:
        kept, ring = output_action.border_masks(tuple(out.shape[1:]))
    except InputError as err:
        raise InputError(f"For {what}: {err}") from None
    kept_or_all = None if bool(kept.all()) else kept.to(out.device)
    ring_rows = ring.to(out.device) if tracks_border(output_action, options.output_mode) else None
    return _Components(kept_or_all, ring_rows)


def _analysed_components(output_action: Optional[GroupAction], out: Tensor) -> int:
    """The components of ``out`` ``(B, ...)`` whose rows the report gets."""
    if isinstance(output_action, ImageAction) and output_action.border:
        return int(output_action.border_masks(tuple(out.shape[1:]))[0].sum())
    return out[0].numel()


def _draw_projections(options: RowOptions, num_outputs: int) -> Optional[Tensor]:
    """The ``(R, K)`` float64 (CPU) output projections of ``options``; ``None`` for ``"jacobian"``."""
    return projection_matrix(options.output_mode, num_outputs, options.num_projections, options.generator)


def projection_matrix(
    output_mode: str, num_outputs: int, num_projections: Optional[int], generator: Optional[torch.Generator]
) -> Optional[Tensor]:
    """The ``(R, K)`` float64 (CPU) output projections of a mode; ``None`` for ``"jacobian"`` (every component)."""
    if output_mode == "sum":
        return torch.ones(1, num_outputs, dtype=torch.float64)
    if output_mode == "random":
        _check_num_projections(num_projections)
        # z / sqrt(r): E[z^T z] / r = I, so sum_j (z_j J)^T (z_j J) / r estimates J^T J without bias
        z = torch.randn(num_projections, num_outputs, generator=generator, dtype=torch.float64)  # type: ignore[arg-type]
        return z / math.sqrt(num_projections)  # type: ignore[arg-type]
    if output_mode == "jacobian":
        return None
    raise ValueError(f"Expected `output_mode` to be one of {', '.join(OUTPUT_MODES)}, got {output_mode!r}.")


def _project(rows: Tensor, projections: Optional[Tensor]) -> Tensor:
    """Rows ``(B, K, m)`` of every output component projected to ``(B, R, m)`` (unchanged for ``None``)."""
    if projections is None:
        return rows
    return torch.einsum("rk,bkm->brm", projections.to(rows.device, rows.dtype), rows)


def _select(values: Tensor, mask: Optional[Tensor]) -> Tensor:
    """The components ``mask`` picks along axis 1 (all for ``None``)."""
    return values if mask is None else values[:, mask.to(values.device)]


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
        flat = model_output(model, xg, output_transform).reshape(x.shape[0], -1)
        projections = projection_matrix(output_mode, flat.shape[1], num_projections, generator)
        return output_gradients(flat, xg, projections, retain_graph=False)


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

    On the CPU a loop of backward passes is the faster of the two (benchmarks/README.md has the
    measurement); elsewhere the batched pass is tried first.
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


def jvp_in_chunks(
    f: Callable[[Tensor], Tuple[Tensor, ...]], x: Tensor, tangents: Tensor, per_pass: Optional[int]
) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
    """:func:`jvp_through` with at most ``per_pass`` of the ``m`` tangents ``(B, m, ...)`` in each pass.

    The tangents of the outputs are concatenated in order: the same numbers as one pass, with the
    memory of ``per_pass`` tangents (``None``: all at once).
    """
    m = tangents.shape[1]
    if per_pass is None or per_pass >= m:
        return jvp_through(f, x, tangents)
    parts = [jvp_through(f, x, tangents[:, i:i + per_pass]) for i in range(0, m, per_pass)]
    return parts[0][0], tuple(torch.cat([p[1][j] for p in parts]) for j in range(len(parts[0][1])))


def _float64_rows(jvp: Tensor) -> Tensor:
    """Rows ``(B, K, m)`` in float64 from the tangents ``(m, B, ...)`` of an output."""
    flat = jvp.reshape(jvp.shape[0], jvp.shape[1], -1)
    return flat.permute(1, 2, 0).to(float64_device(flat.device)).to(torch.float64)


class BatchRows(NamedTuple):
    """The rows of one batch from one pass, for every analysed output.

    Attributes:
        rows: ``name -> (B, R, m)`` float64: the rows the report solves.
        border_rows: ``name -> (B, K_ring, m)`` float64 rows of the border ring, for the outputs
            whose output action is an :class:`~liegg_lightning.ImageAction` (with one row per
            component): what ``border_share`` is read from.
        derivative: The mode that formed them (``"forward"`` or ``"reverse"``).
    """

    rows: Dict[str, Tensor]
    border_rows: Dict[str, Tensor]
    derivative: str


def outputs_rows(
    outputs_fn: OutputsFn, x: Tensor, outputs: Mapping[str, Optional[GroupAction]], options: RowOptions
) -> BatchRows:
    """Polarization rows of several outputs of one network from one pass.

    With ``derivative="auto"`` a mode that cannot differentiate the model (an operation without a
    forward-mode derivative, or a graph cut inside ``forward`` that leaves a zero derivative while
    the output moves) hands over to the other mode, with one warning saying so; an explicit mode
    raises instead, naming the option that works.

    Args:
        outputs_fn: From the network's input to the outputs named in ``outputs``, in that order.
        x: A batch of inputs; validated against ``options.action``.
        outputs: ``name -> output action`` (``None``: invariance) of each output, in order.
        options: How rows are formed; ``"auto"`` is decided here from a plain forward pass.

    Returns:
        The :class:`BatchRows` of every output.

    Raises:
        NotImplementedError: When the requested mode (or, with ``"auto"``, both) has no derivative
            for an operation of the model.
        DisconnectedGraphError: When the requested mode (or, with ``"auto"``, both) sees a zero
            derivative of an output that moves with the input.
    """
    options.action.validate_input(x)
    derivative = options.derivative
    if derivative == "auto":
        per_sample = outputs_rows_per_sample(outputs_fn, x, outputs)
        derivative = choose_derivative("auto", options.action.num_generators,  # type: ignore[assignment]
                                       sum(options.rows_per_output(k) for k in per_sample.values()))
    try:
        return _rows_in_mode(outputs_fn, x, outputs, options, derivative)
    except (NotImplementedError, DisconnectedGraphError) as err:
        other = "reverse" if derivative == "forward" else "forward"
        if options.derivative != "auto":
            raise type(err)(f"{_first_line(err)} {_remedy(err, derivative)}") from err
        warnings.warn(f"LieGG: {_first_line(err)} Using {other} mode instead.", stacklevel=2)
        try:
            return _rows_in_mode(outputs_fn, x, outputs, options, other)
        except (NotImplementedError, DisconnectedGraphError) as again:
            raise type(again)(
                f"Neither derivative mode can analyse this model. {derivative}: {_first_line(err)} {other}: "
                f"{_first_line(again)} Remove the cut from `forward`, or analyse a layer before it with `layers=`."
            ) from again


def _remedy(err: BaseException, mode: str) -> str:
    """What works instead of ``mode``, after it failed with ``err``."""
    if not isinstance(err, DisconnectedGraphError):
        other = "reverse" if mode == "forward" else "forward"
        return f"derivative={other!r} (or 'auto', which falls back to it) differentiates it."
    if mode == "reverse":
        return "derivative='forward' (or 'auto') differentiates through `torch.no_grad()`, not through `.detach()`."
    return "No derivative mode goes through `.detach()` or rounding: remove it, or analyse a layer before it."


def _first_line(err: BaseException) -> str:
    """The first line of an error's message, as a sentence; forward AD's own names the operation."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, NotImplementedError) and not isinstance(err, DisconnectedGraphError):
        text = f"this model has an operation without a derivative in that mode ({text.rstrip('.')})."
    return text if text.endswith(".") else text + "."


def _rows_in_mode(
    outputs_fn: OutputsFn, x: Tensor, outputs: Mapping[str, Optional[GroupAction]], options: RowOptions, mode: str
) -> BatchRows:
    """Every output's rows in ``mode``; a zero derivative of an output that moves raises."""
    if mode == "forward":
        rows, border, zero = _forward_rows(outputs_fn, x, outputs, options)
    else:
        rows, border, zero = _reverse_rows(outputs_fn, x, outputs, options)
    _check_connected(outputs_fn, x, options.action, list(outputs), zero, mode)
    return BatchRows(rows, border, mode)


def outputs_rows_per_sample(
    outputs_fn: OutputsFn, x: Tensor, outputs: Mapping[str, Optional[GroupAction]]
) -> Dict[str, int]:
    """Analysed components of each output (before any projection), from one plain forward pass on ``x``."""
    with derivative_context(x.device), torch.no_grad():
        outs = outputs_fn(x.detach())
    return {name: _analysed_components(outputs[name], out) for name, out in zip(outputs, outs)}


def _forward_rows(
    outputs_fn: OutputsFn, x: Tensor, outputs: Mapping[str, Optional[GroupAction]], options: RowOptions
) -> Tuple[Dict[str, Tensor], Dict[str, Tensor], List[str]]:
    """Forward mode: one JVP per basis tangent carries every output's tangent at once.

    Also returns the outputs whose tangents are all exactly zero.
    """
    rows: Dict[str, Tensor] = {}
    border: Dict[str, Tensor] = {}
    zero: List[str] = []
    # forward mode needs no backward graph: no_grad (inside inference_mode(False)) skips building one
    with derivative_context(x.device), torch.no_grad():
        xd = x.detach().clone()
        tangents = options.action.tangents(xd).to(xd.dtype)
        with forward_mode_kernels():
            outs, jvps = jvp_in_chunks(outputs_fn, xd, tangents, options.tangents_per_pass)
        for (name, output_action), out, jvp in zip(outputs.items(), outs, jvps):
            if not bool(jvp.any()):
                zero.append(name)
            full = _float64_rows(jvp)
            if output_action is not None:
                full = full - output_tangents(output_action, out, what=describe(name)).to(full.device)
            parts = _components(output_action, out, options, describe(name))
            kept = _select(full, parts.kept)
            rows[name] = _project(kept, _draw_projections(options, kept.shape[1]))
            if parts.ring is not None:
                border[name] = _select(full, parts.ring)
    return rows, border, zero


def _reverse_rows(
    outputs_fn: OutputsFn, x: Tensor, outputs: Mapping[str, Optional[GroupAction]], options: RowOptions
) -> Tuple[Dict[str, Tensor], Dict[str, Tensor], List[str]]:
    """Reverse mode: one forward pass keeps every output's graph, then each output's backward passes.

    Also returns the outputs whose input gradients are all exactly zero.
    """
    rows: Dict[str, Tensor] = {}
    border: Dict[str, Tensor] = {}
    zero: List[str] = []
    names = list(outputs)
    with derivative_context(x.device):
        xg = x.detach().clone().requires_grad_(True)
        outs = outputs_fn(xg)
        # every output is checked against its action before any backward pass
        out_tangents = [
            None if outputs[n] is None else output_tangents(outputs[n], o, what=describe(n))  # type: ignore[arg-type]
            for n, o in zip(names, outs)
        ]
        for i, (name, out) in enumerate(zip(names, outs)):
            parts = _components(outputs[name], out, options, describe(name))
            # per-component rows are formed for the whole map and split; projections see the kept part only
            selected = out.reshape(out.shape[0], -1) if parts.ring is not None else _select(
                out.reshape(out.shape[0], -1), parts.kept)
            projections = _draw_projections(options, selected.shape[1])
            tangents = out_tangents[i]
            if tangents is not None and parts.ring is None:
                tangents = _project(_select(tangents, parts.kept), projections)
            full, moved = reverse_rows_in_chunks(selected, xg, x, projections, options.action, tangents,
                                                 options.rows_per_pass, retain_graph=i < len(names) - 1)
            if not moved:
                zero.append(name)
            rows[name] = _select(full, parts.kept) if parts.ring is not None else full
            if parts.ring is not None:
                border[name] = _select(full, parts.ring)
    return rows, border, zero


def reverse_rows_in_chunks(
    out: Tensor,
    xg: Tensor,
    x: Tensor,
    projections: Optional[Tensor],
    action: GroupAction,
    out_tangents: Optional[Tensor],
    per_pass: Optional[int],
    *,
    retain_graph: bool,
) -> Tuple[Tensor, bool]:
    """Reverse-mode rows ``(B, R, m)`` of the outputs ``(B, K)``, the input gradients of ``per_pass`` rows at a time.

    The gradients ``(B, R, *in)`` are the largest tensors of a reverse pass (a row per output
    component, each the size of the input): formed ``per_pass`` rows at a time (``None``: all at
    once) and turned into rows at once, they never take more than that. The same numbers either way.
    Also returns whether any input gradient was nonzero (all zero: the output does not move, or the
    graph was cut).
    """
    num = out.shape[1] if projections is None else projections.shape[0]
    if per_pass is None or per_pass >= num:
        grads = output_gradients(out, xg, projections, retain_graph=retain_graph)
        return _rows_from_gradients(x, grads, action, out_tangents), bool(grads.any())
    # one-hot projections pick the components one by one, as the Jacobian's own rows
    rows_of = torch.eye(num, dtype=torch.float64) if projections is None else projections
    parts = []
    moved = False
    for start in range(0, num, per_pass):
        stop = min(start + per_pass, num)
        grads = output_gradients(out, xg, rows_of[start:stop], retain_graph=retain_graph or stop < num)
        tangents = None if out_tangents is None else out_tangents[:, start:stop]
        parts.append(_rows_from_gradients(x, grads, action, tangents))
        moved = moved or bool(grads.any())
        del grads
    return torch.cat(parts, dim=1), moved


def _rows_from_gradients(x: Tensor, grads: Tensor, action: GroupAction, out_tangents: Optional[Tensor]) -> Tensor:
    """Reverse-mode rows ``(B, R, m)``: the action's closed form on the gradients, minus the output tangents."""
    with torch.inference_mode(False):
        dev = float64_device(x.device)
        rows = action.rows(x.detach().to(dev).clone(), grads.detach().to(dev))
        if out_tangents is not None:
            rows = rows - out_tangents.to(rows.device)
        return rows


def _model_outputs(model: Callable[[Tensor], Tensor], output_transform: Optional[Callable]) -> OutputsFn:
    """The model's output (after ``output_transform``) as the one analysed output."""

    def f(inp: Tensor) -> Tuple[Tensor]:
        return (model_output(model, inp, output_transform),)

    return f


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
    the flattened output components (those an ``ImageAction(border=k)`` keeps). ``"sum"`` and
    ``"random"`` project both terms alike.

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
            (one JVP per basis tangent), or ``"auto"`` (:func:`choose_derivative` by count, from a
            plain forward pass's output size).
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
    options = RowOptions(action, output_mode, num_projections, output_transform, output_action, derivative, generator)
    fn = _model_outputs(model, output_transform)
    return outputs_rows(fn, x, {MODEL_OUTPUT: output_action}, options).rows[MODEL_OUTPUT]


def forward_rows(model: Callable[[Tensor], Tensor], x: Tensor, action: GroupAction, **options: Any) -> Tensor:
    """Rows ``(B, K, m)`` by forward mode: one Jacobian-vector product per basis tangent.

    :func:`polarization_rows` with ``derivative="forward"``; ``options`` are its keywords
    (``output_mode``, ``num_projections``, ``generator``, ``output_transform``, ``output_action``).
    """
    if "derivative" in options:
        raise ValueError("forward_rows is forward mode: pass `derivative` to polarization_rows instead.")
    return polarization_rows(model, x, action, derivative="forward", **options)
