"""Shared models and data for the engine tests: small, seeded, CPU."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Iterator, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn

# the float64 brute force lives beside the tests
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread for a module: these tensors are tiny, and on a shared machine extra
    threads only contend (a test that takes 0.6 s on one thread took 25 s on two busy cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class O5Model(nn.Module):
    """``F(r1, r2) = g(|r1|^2, |r2|^2, r1 . r2)`` for ``r1, r2`` in ``R^5``: exactly ``O(5)``-invariant.

    Args:
        extra_output: Append ``r1[0]``, which leaves only ``so(4)`` on coordinates 1..4.
        breaking: Add ``breaking * (r1^T A r1 + r2^T B r2)`` to every output, with ``A``, ``B``
            symmetric with distinct eigenvalues, which breaks every ``so(5)`` direction.
        seed: Seed of the weights of ``g``.
    """

    def __init__(self, extra_output: bool = False, breaking: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.g = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))
        with torch.no_grad():
            for p in self.g.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
        self.extra_output = extra_output
        self.breaking = breaking

        def symmetric(eigs: Tensor) -> Tensor:
            q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
            return (q @ torch.diag(eigs) @ q.T).float()

        self.register_buffer("a", symmetric(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64) / 3))
        self.register_buffer("b", symmetric(torch.tensor([-2.0, -1.0, 0.5, 1.5, 3.0], dtype=torch.float64) / 3))

    def forward(self, x: Tensor) -> Tensor:
        v = x.reshape(x.shape[0], 2, 5)
        r1, r2 = v[:, 0], v[:, 1]
        feats = torch.stack([(r1 * r1).sum(1), (r2 * r2).sum(1), (r1 * r2).sum(1)], dim=1)
        out = self.g(feats)
        if self.breaking:
            quad = ((r1 @ self.a) * r1).sum(1) + ((r2 @ self.b) * r2).sum(1)
            out = out + self.breaking * quad[:, None]
        if self.extra_output:
            out = torch.cat([out, r1[:, :1]], dim=1)
        return out


@pytest.fixture(scope="session")
def o5_inputs() -> Tensor:
    """256 samples of ``(r1, r2)`` as ``(N, 10)`` float32."""
    return torch.randn(256, 10, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def o5_model() -> O5Model:
    return O5Model().eval()


def gaussian_blobs(
    num: int,
    height: int,
    width: int,
    *,
    blobs: int = 3,
    seed: int = 0,
    centred: bool = False,
    border: float = 5.0,
    sigma: Tuple[float, float] = (2.5, 3.5),
    dtype: torch.dtype = torch.float64,
    channels: Optional[int] = None,
) -> Tensor:
    """Smooth images: sums of isotropic Gaussian blobs (widths in pixels) well inside the frame.

    Args:
        num: Number of images.
        height, width: Image size in pixels.
        blobs: Blobs per image.
        seed: RNG seed.
        centred: Put every blob at the image centre (radially symmetric images).
        border: Blob centres keep this many (largest) blob widths from the edges.
        sigma: Range of blob widths, in pixels.
        dtype: Output dtype.
        channels: Add a channel axis with this many (scaled) copies.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(height, dtype=torch.float64)[:, None]
    cols = torch.arange(width, dtype=torch.float64)[None, :]
    images = torch.zeros(num, height, width, dtype=torch.float64)
    # centres at least `border` blob widths from every edge, so the images vanish at the border
    reach_y = max((height - 1) / 2.0 - border * sigma[1], 0.0)
    reach_x = max((width - 1) / 2.0 - border * sigma[1], 0.0)
    for i in range(num):
        for _ in range(blobs):
            u = torch.rand(2, generator=gen, dtype=torch.float64) * 2 - 1
            cy = (height - 1) / 2.0 + (0.0 if centred else float(u[0]) * reach_y)
            cx = (width - 1) / 2.0 + (0.0 if centred else float(u[1]) * reach_x)
            s = sigma[0] + (sigma[1] - sigma[0]) * float(torch.rand((), generator=gen, dtype=torch.float64))
            amp = 0.5 + float(torch.rand((), generator=gen, dtype=torch.float64))
            images[i] += amp * torch.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * s * s))
    if channels is not None:
        scale = torch.linspace(1.0, 0.5, channels, dtype=torch.float64)
        images = images[:, None] * scale[None, :, None, None]
    return images.to(dtype)
