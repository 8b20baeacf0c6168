"""Hand-written stand-ins for the classifiers users bring from torchvision and timm, at their sizes.

torchvision's and timm's wheels are not always at hand (on a CPU-only machine the package index
may offer only CUDA builds that do not import beside a CPU torch). What an analysis costs depends
on the blocks, the widths, the input size and the number of outputs, never on the weights, so
these modules rebuild the same blocks at the same sizes, with random weights:

- :func:`resnet18`: torchvision's ResNet-18 (basic blocks, batch norm, 11.7 M parameters at 1,000
  classes);
- :func:`mobilenet_v3_small`: torchvision's MobileNetV3-Small (depthwise convolutions,
  squeeze-and-excitation, hard-swish; 2.5 M parameters);
- :func:`vit_tiny`: timm's ``vit_tiny_patch16_224`` (patch embedding, class token, pre-norm
  blocks with fused attention, ``F.scaled_dot_product_attention``, or ``nn.MultiheadAttention``);
- :func:`cnn3d`: a 3-D CNN on volumes (``VolumeAction``);
- :func:`cnn1d`: a 1-D CNN on signals (``SignalAction``).

Every builder takes sizes as arguments, so the tests build small versions of the same blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["cnn1d", "cnn3d", "mobilenet_v3_small", "resnet18", "vit_tiny"]


def torchvision_init(model: nn.Module, linear_std: float = 0.0) -> nn.Module:
    """torchvision's initialisation of its CNNs: without it a deep random network's output is flat.

    Convolutions Kaiming-normal (fan out), batch norm at the identity, linear layers ``N(0,
    linear_std)`` with zero bias (``linear_std=0`` keeps PyTorch's default, as ResNet does).
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std > 0:
            nn.init.normal_(module.weight, 0.0, linear_std)
            nn.init.zeros_(module.bias)
    return model


# ----------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a (projected, when the shape changes) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.downsample(x))


def resnet18(num_classes: int = 1000, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2)) -> nn.Module:
    """torchvision's ``resnet18`` (layer names as there: ``layer1`` .. ``layer4``, ``fc``)."""
    layers: List[Tuple[str, nn.Module]] = [
        ("conv1", nn.Conv2d(3, width, 7, 2, 3, bias=False)), ("bn1", nn.BatchNorm2d(width)),
        ("relu", nn.ReLU()), ("maxpool", nn.MaxPool2d(3, 2, 1)),
    ]
    cin = width
    for i, count in enumerate(blocks):
        cout = width * 2**i
        stage = [BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1) for j in range(count)]
        layers.append((f"layer{i + 1}", nn.Sequential(*stage)))
        cin = cout
    layers += [("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(cin, num_classes))]
    return torchvision_init(nn.Sequential(OrderedDict(layers)))


# ----------------------------------------------------------------------------- MobileNetV3


def _divisible(value: float, divisor: int = 8) -> int:
    """The channel rounding of MobileNet: a multiple of ``divisor``, never 10 % below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SqueezeExcite(nn.Module):
    """Channel gates from the globally pooled features (hard-sigmoid), as in MobileNetV3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = _divisible(channels // 4)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * gate


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise ``kernel`` x ``kernel``, optional squeeze-excite, project (1x1)."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, hswish: bool, stride: int) -> None:
        super().__init__()
        act: nn.Module = nn.Hardswish() if hswish else nn.ReLU()
        parts: List[nn.Module] = []
        if expanded != cin:
            parts += [nn.Conv2d(cin, expanded, 1, bias=False), nn.BatchNorm2d(expanded), act]
        parts += [nn.Conv2d(expanded, expanded, kernel, stride, kernel // 2, groups=expanded, bias=False),
                  nn.BatchNorm2d(expanded), act]
        if se:
            parts.append(SqueezeExcite(expanded))
        parts += [nn.Conv2d(expanded, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*parts)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.residual else out


#: MobileNetV3-Small's blocks: kernel, expanded channels, output channels, squeeze-excite, hard-swish, stride.
MOBILENET_V3_SMALL = (
    (3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
    (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
    (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1),
)


def mobilenet_v3_small(
    num_classes: int = 1000, config: Sequence[Tuple[int, int, int, bool, bool, int]] = MOBILENET_V3_SMALL,
    hidden: int = 1024,
) -> nn.Module:
    """torchvision's ``mobilenet_v3_small`` (``features``, ``avgpool``, ``classifier``)."""
    stem = 16
    layers: List[nn.Module] = [nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem),
                                             nn.Hardswish())]
    cin = stem
    for kernel, expanded, cout, se, hswish, stride in config:
        layers.append(InvertedResidual(cin, kernel, expanded, cout, se, hswish, stride))
        cin = cout
    last = 6 * cin
    layers.append(nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.Hardswish()))
    return torchvision_init(nn.Sequential(OrderedDict(
        features=nn.Sequential(*layers), avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
        classifier=nn.Sequential(nn.Linear(last, hidden), nn.Hardswish(), nn.Dropout(0.2),
                                 nn.Linear(hidden, num_classes)),
    )), linear_std=0.01)


# ----------------------------------------------------------------------------- ViT


class Attention(nn.Module):
    """Multi-head self-attention as timm writes it: one ``qkv`` projection, fused attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class TorchAttention(nn.Module):
    """The same attention through ``nn.MultiheadAttention`` (its fused fast path in eval mode)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class Block(nn.Module):
    """A pre-norm transformer block: attention and a GELU MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, mlp: int, attention: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads) if attention == "sdpa" else TorchAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """timm's ``VisionTransformer`` (``patch_embed``, ``blocks``, ``norm``, ``head``), class-token pooling."""

    def __init__(self, image: int, patch: int, dim: int, depth: int, heads: int, num_classes: int,
                 attention: str = "sdpa") -> None:
        super().__init__()
        if attention not in ("sdpa", "mha"):
            raise ValueError(f"Expected `attention` to be 'sdpa' or 'mha', got {attention!r}.")
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, 4 * dim, attention) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def vit_tiny(num_classes: int = 1000, image: int = 224, patch: int = 16, dim: int = 192, depth: int = 12,
             heads: int = 3, attention: str = "sdpa") -> nn.Module:
    """timm's ``vit_tiny_patch16_224`` (5.7 M parameters at 1,000 classes)."""
    return VisionTransformer(image, patch, dim, depth, heads, num_classes, attention)


# ----------------------------------------------------------------------------- 1-D and 3-D CNNs


def cnn3d(num_classes: int = 10, channels: Sequence[int] = (16, 32, 64)) -> nn.Module:
    """A 3-D CNN for volumes ``(B, 1, D, H, W)``: 3x3x3 convolutions, batch norm, pooling, a linear head."""
    layers: List[nn.Module] = []
    cin = 1
    for cout in channels:
        layers += [nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(), nn.MaxPool3d(2)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(cin, num_classes))


def cnn1d(num_classes: int = 10, channels: Sequence[int] = (32, 64, 128), in_channels: int = 1) -> nn.Module:
    """A 1-D CNN for signals ``(B, C, L)``: wide convolutions, batch norm, pooling, a linear head."""
    layers: List[nn.Module] = []
    cin = in_channels
    for cout in channels:
        layers += [nn.Conv1d(cin, cout, 7, padding=3, bias=False), nn.BatchNorm1d(cout), nn.GELU(), nn.MaxPool1d(2)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(cin, num_classes))
