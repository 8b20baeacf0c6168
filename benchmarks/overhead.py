"""Section ``overhead``: the engine against the derivatives it cannot avoid.

For each case the same batches go through:

* the *derivative floor*: the cheapest of K reverse passes (a loop of ``torch.autograd.grad`` or
  ``vmap(jacrev)``) and m forward passes (``vmap`` of ``torch.func.jvp`` over precomputed
  tangents): per-sample input gradients or JVPs only, no rows, no Gram matrix;
* the engine: ``LieGGMetric.update`` over the batches, and its stages apart (the derivative pass,
  the rows, the Gram update, the epoch-end ``compute()``), each fed precomputed inputs.

Reported: ``engine / floor`` (the goal is <= 1.1) and each stage over the floor, which says where
any excess goes. What the callback adds to a whole ``fit`` is the ``user_feel`` section.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import torch
from common import interleaved_medians, table, timed
from torch import Tensor, nn

GOAL = 1.1


# ----------------------------------------------------------------------------------------------
# models and derivative floors (the least work that produces what the method needs)


def paper_mlp(out_features: int = 1, in_features: int = 10, width: int = 384, depth: int = 3) -> nn.Module:
    """The paper's O(5) regression network: ``in -> width x depth -> out`` with SiLU."""
    layers: List[nn.Module] = []
    d = in_features
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.SiLU()]
        d = width
    layers.append(nn.Linear(d, out_features))
    return nn.Sequential(*layers)


def small_cnn(size: int = 28, channels: int = 1, classes: int = 10) -> nn.Module:
    """Two strided convolutions and a linear classifier, for ``size x size`` images."""
    after = (size + 1) // 2
    after = (after + 1) // 2
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, stride=2, padding=1),
        nn.SiLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.SiLU(),
        nn.Flatten(),
        nn.Linear(32 * after * after, classes),
    )


def floor_reverse_loop(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Per-sample input gradients ``(K, B, *in)``: one forward, then one backward per output."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = model(xg).reshape(x.shape[0], -1)
        k = out.shape[1]
        grads = [torch.autograd.grad(out[:, j].sum(), xg, retain_graph=j < k - 1)[0] for j in range(k)]
    return torch.stack(grads)


def floor_reverse_vmap(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Per-sample Jacobians ``(B, K, *in)`` with ``vmap(jacrev)`` over single samples."""

    def one(xi: Tensor) -> Tensor:
        return model(xi.unsqueeze(0)).reshape(-1)

    return torch.func.vmap(torch.func.jacrev(one))(x.detach())


def floor_forward(model: Callable[[Tensor], Tensor], x: Tensor, tangents: Tensor) -> Tensor:
    """Jacobian-vector products ``(m, B, K)``: ``vmap`` over precomputed tangents ``(B, m, *in)``.

    Runs under ``no_grad``: forward-mode AD does not need the backward graph, and recording it
    (parameters require grad) costs about 15% on the CNN case.
    """
    xd = x.detach()

    def f(inp: Tensor) -> Tensor:
        return model(inp).reshape(inp.shape[0], -1)

    def jvp_one(t: Tensor) -> Tensor:
        return torch.func.jvp(f, (xd,), (t,))[1]

    with torch.no_grad():
        return torch.func.vmap(jvp_one, in_dims=1)(tangents)


def floor_variants(
    model: Callable[[Tensor], Tensor], batches: Sequence[Tensor], tangents: Sequence[Tensor]
) -> Dict[str, Callable[[], None]]:
    """The three floor candidates as zero-argument callables over all ``batches``.

    The tangents are computed before timing (a generous floor: the method has to make them).
    """

    def reverse_loop() -> None:
        for x in batches:
            floor_reverse_loop(model, x)

    def reverse_vmap() -> None:
        for x in batches:
            floor_reverse_vmap(model, x)

    def forward() -> None:
        for x, t in zip(batches, tangents):
            floor_forward(model, x, t)

    return {"floor_reverse_loop": reverse_loop, "floor_reverse_vmap": reverse_vmap, "floor_forward": forward}


# ----------------------------------------------------------------------------------------------
# the measurement


def _cases(quick: bool) -> List[Dict[str, Any]]:
    from liegg_lightning import ImageAction, VectorAction

    n_mlp, n_cnn = (128, 128) if quick else (4096, 2048)
    return [
        {"case": "MLP 10-384x3-1, VectorAction(5,2)", "model": lambda: paper_mlp(1),
         "action": VectorAction(5, components=2), "shape": (10,), "n": n_mlp},
        {"case": "MLP 10-384x3-10, VectorAction(5,2)", "model": lambda: paper_mlp(10),
         "action": VectorAction(5, components=2), "shape": (10,), "n": n_mlp},
        {"case": "CNN 28x28 K=10, ImageAction()", "model": lambda: small_cnn(28),
         "action": ImageAction(), "shape": (1, 28, 28), "n": n_cnn},
    ]


def _stages(metric: Any, model: Callable[[Tensor], Tensor], batches: List[Tensor]) -> Dict[str, Callable[[], Any]]:
    """The engine's stages over all batches as callables, each fed precomputed inputs."""
    from liegg_lightning.functional.polarization import forward_rows, input_gradients

    action = metric.action
    stages: Dict[str, Callable[[], Any]] = {}
    if metric._resolved_derivative == "forward":
        rows = [forward_rows(model, x, action) for x in batches]
        stages["derivative (forward_rows: tangents + jvp + float64)"] = lambda: [
            forward_rows(model, x, action) for x in batches
        ]
    else:
        grads = [input_gradients(model, x) for x in batches]
        rows = [action.rows(x, g) for x, g in zip(batches, grads)]
        stages["derivative (input_gradients)"] = lambda: [input_gradients(model, x) for x in batches]
        stages["rows (action.rows, float64)"] = lambda: [action.rows(x, g) for x, g in zip(batches, grads)]
    stages["gram (metric.update_rows)"] = lambda: [metric.update_rows(r) for r in rows]
    return stages


def _compute(metric: Any) -> Any:
    """What ``metric.compute()`` does, without TorchMetrics' cache of the last result."""
    from liegg_lightning.functional.symmetry import symmetry_compute

    return symmetry_compute(metric.gram, int(metric.num_samples), int(metric.num_rows), int(metric.num_skipped),
                             metric.action, reference=metric.reference, known=metric.known)


def _measure_case(spec: Dict[str, Any], device: torch.device, quick: bool, repeats: int) -> Dict[str, Any]:
    from liegg_lightning import LieGGMetric

    batch_size = 128 if quick else 256
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = spec["model"]().to(device).eval()
    action = spec["action"]
    x_all = torch.randn(spec["n"], *spec["shape"], generator=gen)
    with torch.no_grad():
        k = net(x_all[:1].to(device)).reshape(1, -1).shape[1]
    batches = [x.to(device) for x in x_all.split(batch_size)]
    tangents = [action.tangents(x) for x in batches]
    row: Dict[str, Any] = {"case": spec["case"], "K": k, "m": action.num_generators, "N": spec["n"],
                           "batch_size": batch_size}

    # which floor candidate wins: one timing each after a warm-up, then repeats for those near the best
    candidates = floor_variants(net, batches, tangents)
    for fn in candidates.values():
        fn()
    first = {name: timed(fn, device) for name, fn in candidates.items()}
    best = min(first.values())
    kept = {name: fn for name, fn in candidates.items() if first[name] <= 1.5 * best}
    row["floor_candidates_single_s"] = first

    metric = LieGGMetric(action).to(device)

    def engine() -> None:
        for x in batches:
            metric.update(net, x)

    engine()  # resolves derivative="auto", which the stages follow
    stages = _stages(metric, net, batches)
    variants: Dict[str, Callable[[], Any]] = {**kept, "engine": engine}
    variants.update({"stage: " + name: fn for name, fn in stages.items()})
    variants["stage: compute() (eigh + report, once per epoch)"] = lambda: _compute(metric)
    res = interleaved_medians(variants, device, repeats)
    floors = {name: res[name]["median"] for name in kept}
    floor_name = min(floors, key=floors.__getitem__)
    floor = floors[floor_name]
    floor_min = min(res[name]["min"] for name in kept)
    row.update(floor_s=floor, floor_kind=floor_name.replace("floor_", ""), floors_s=floors,
               engine_s=res["engine"]["median"], engine_ratio=res["engine"]["median"] / floor,
               engine_ratio_of_minima=res["engine"]["min"] / floor_min,
               derivative_mode=metric._resolved_derivative, times=res,
               breakdown_s={name[7:]: r["median"] for name, r in res.items() if name.startswith("stage: ")})
    return row


def run(device: torch.device, quick: bool, repeats: int, log: Callable[[str], None]) -> Dict[str, Any]:
    """Measure every case; returns the JSON section."""
    results: List[Dict[str, Any]] = []
    for spec in _cases(quick):
        row = _measure_case(spec, device, quick, repeats)
        results.append(row)
        log(f"  {spec['case']}: floor {row['floor_s']:.3f}s ({row['floor_kind']}), "
            f"engine/floor {row['engine_ratio']:.2f}")
    return {"goal": GOAL, "repeats": repeats, "cases": results}


def render(section: Dict[str, Any]) -> str:
    """Markdown tables of the section."""
    rows = [{"case": r["case"], "K": r["K"], "m": r["m"], "N": r["N"], "mode": r["derivative_mode"],
             "floor (s)": r["floor_s"], "floor kind": r["floor_kind"], "engine (s)": r["engine_s"],
             "engine/floor": r["engine_ratio"], "(of minima)": r["engine_ratio_of_minima"]}
            for r in section["cases"]]
    cols = ["case", "K", "m", "N", "mode", "floor (s)", "floor kind", "engine (s)", "engine/floor", "(of minima)"]
    text = table(rows, cols, f"overhead: the engine over the derivative floor (goal <= {section['goal']})")
    brows = [{"case": r["case"], "stage": stage, "time (s)": t, "/ floor": t / r["floor_s"]}
             for r in section["cases"] for stage, t in r["breakdown_s"].items()]
    text += "\n" + table(brows, ["case", "stage", "time (s)", "/ floor"], "overhead: where the engine's time goes")
    return text
