"""Tests for ``liegg_lightning.testing``: ``check_action`` passes the built-in actions and catches broken ones."""

from __future__ import annotations

import pytest
import torch

from liegg_lightning import ImageAction, TangentAction, VectorAction
from liegg_lightning.testing import check_action

pytestmark = pytest.mark.usefixtures("single_thread")


def _smooth_images(batch: int = 2, channels: int = 3, size: int = 24) -> torch.Tensor:
    """Gaussian blobs that fade to zero at the border, where finite transformations pad."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    blob = torch.exp(-((xx - 0.1) ** 2 + 2 * (yy + 0.05) ** 2) / 0.08)
    return blob.expand(batch, channels, size, size).clone().double()


@pytest.mark.parametrize(
    ("action", "inputs"),
    [(VectorAction(dim=3, components=2), torch.randn(4, 6, dtype=torch.float64)),
     (VectorAction(dim=4), torch.randn(3, 2, 4, dtype=torch.float64)),
     (ImageAction(), _smooth_images()), (ImageAction(affine=True), _smooth_images()),
     (ImageAction(), _smooth_images()[:, 0]),
     (TangentAction(lambda x: VectorAction(dim=3).tangents(x), (3, 3)), torch.randn(5, 3, dtype=torch.float64))],
)
def test_check_action_passes_every_built_in_action(action: object, inputs: torch.Tensor) -> None:
    check_action(action, inputs)  # type: ignore[arg-type]


def test_check_action_catches_actions_whose_views_disagree() -> None:
    x = torch.randn(4, 3, dtype=torch.float64)
    # tangents of the wrong sign against the matrix exponential of transform
    flipped = TangentAction(lambda t: -VectorAction(dim=3).tangents(t), (3, 3),
                            transform_fn=VectorAction(dim=3).transform)
    with pytest.raises(AssertionError, match="central difference"):
        check_action(flipped, x)

    class WrongRows(VectorAction):
        def rows(self, x: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
            return super().rows(x, grads).transpose(-1, -2).reshape(grads.shape[0], grads.shape[1], -1)

    with pytest.raises(AssertionError, match="contracted"):
        check_action(WrongRows(dim=3), x)




