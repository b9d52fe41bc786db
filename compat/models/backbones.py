"""Backbones: one explicit registry of image encoders, each mapping images to a flat (N, out_dim) vector.

``build_backbone("resnet18", small_images=True, in_channels=1)`` builds a registered backbone;
``register_backbone("name")`` adds a builder. The built-in builders are registered below, in this
module's own table; nothing else is touched on import. Every backbone exposes ``out_dim``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from compat.errors import CompatError
from compat.registry import Registry

__all__ = [
    "BACKBONES",
    "CifarResNet",
    "SmallCNN",
    "build_backbone",
    "list_backbones",
    "register_backbone",
]

BackboneBuilder = Callable[..., nn.Module]
_Builder = TypeVar("_Builder", bound=BackboneBuilder)

BACKBONES: Registry[BackboneBuilder] = Registry("backbone")


def register_backbone(name: str) -> Callable[[_Builder], _Builder]:
    """Decorator that registers a backbone builder under ``name``.

    The builder takes keyword options and returns an ``nn.Module`` with an ``out_dim`` attribute
    that maps (N, C, H, W) images to (N, out_dim) features.
    """
    return BACKBONES.register(name)


def list_backbones() -> list[str]:
    """Names of the registered backbones, sorted."""
    return BACKBONES.names()


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone.

    Args:
        name: registered name (see :func:`list_backbones`).
        **kwargs: the builder's keyword options; an unknown option is an error.

    Returns:
        Module mapping (N, C, H, W) images to (N, out_dim) features, with an ``out_dim`` attribute.
        ``timm:NAME`` builds a timm model (:mod:`compat.models.timm_backbone`).
    """
    if str(name).startswith("timm:"):
        from compat.models.timm_backbone import timm_backbone

        return timm_backbone(str(name)[len("timm:"):], **kwargs)
    builder = BACKBONES.get(name)
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise CompatError(
                f"backbone {name!r}: unknown option(s) {', '.join(unknown)}; expected some of {', '.join(params)}"
            )
    module = builder(**kwargs)
    if not isinstance(getattr(module, "out_dim", None), int):
        raise CompatError(f"backbone {name!r}: the builder returned a module without an integer out_dim")
    return module


# --- MNIST ------------------------------------------------------------------------------------


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks (32, 64, 128 channels; 2x2 max-pool after the first two) and a
    global average pool. Sized for 28x28 grey MNIST on a CPU.

    Args:
        in_channels: image channels (1 for MNIST).
    """

    out_dim = 128

    def __init__(self, *, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 32),
            nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, images: Tensor) -> Tensor:
        """Args: images (N, in_channels, H, W). Returns: (N, 128)."""
        return self.features(images)


@register_backbone("smallcnn")
def small_cnn(*, in_channels: int = 1) -> SmallCNN:
    """Small CNN for 28x28 MNIST; out_dim 128."""
    return SmallCNN(in_channels=in_channels)


class MLP(nn.Module):
    """Flatten the image, then two fully connected ReLU layers (the classic MNIST perceptron).

    A different architecture from :class:`SmallCNN` at a fraction of its cost: the old model of the
    architecture-change recipes.

    Args:
        in_features: C * H * W of the input images (784 for MNIST).
        hidden: width of both hidden layers; ``out_dim`` equals it.
    """

    def __init__(self, *, in_features: int = 784, hidden: int = 256) -> None:
        super().__init__()
        self.out_dim = hidden
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
        )

    def forward(self, images: Tensor) -> Tensor:
        """Args: images (N, C, H, W) with C * H * W = in_features. Returns: (N, hidden)."""
        return self.features(images)


@register_backbone("mlp")
def mlp(*, in_features: int = 784, hidden: int = 256) -> MLP:
    """Two-hidden-layer perceptron for 28x28 MNIST; out_dim ``hidden``."""
    return MLP(in_features=in_features, hidden=hidden)


# --- CIFAR ResNet-32 ----------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # Option B of He et al. 2016: a 1x1 convolution projects the shortcut.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, section 4.2): a 3x3 stem of 16 channels, then three stages of
    ``blocks_per_stage`` basic blocks (16, 32, 64 channels; stride 2 at stages 2 and 3), option-B
    (1x1 convolution) shortcuts, global average pool. ResNet-32 has 5 blocks per stage.

    Args:
        blocks_per_stage: n, for a depth of 6n + 2.
        in_channels: image channels.
    """

    out_dim = 64

    def __init__(self, *, blocks_per_stage: int = 5, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, 16))
        stages: list[nn.Module] = []
        channels = 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(_BasicBlock(channels, width, stride if i == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        """Args: images (N, in_channels, H, W). Returns: (N, 64)."""
        return self.pool(self.stages(self.stem(images)))


@register_backbone("resnet32_cifar")
def resnet32_cifar(*, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-32 with option-B shortcuts; out_dim 64."""
    return CifarResNet(blocks_per_stage=5, in_channels=in_channels)


# --- torchvision ResNets ------------------------------------------------------------------------


def _load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load a state dict saved with ``torch.save`` from a local file (``weights_only=True``).

    Keys of torchvision's ``fc`` layer are ignored (the backbone has none); anything else that does
    not match, missing, unexpected or of another shape, is an error.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable or unsafe file is bad input
        raise CompatError(f"pretrained: cannot load weights from {str(path)!r}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CompatError(f"pretrained: {str(path)!r} does not hold a state dict (a mapping of names to tensors)")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CompatError(f"pretrained: {str(path)!r} does not match the backbone; " + "; ".join(problems))
    model.load_state_dict(state)


def _torchvision_resnet(
    arch: str, out_dim: int, *, small_images: bool, in_channels: int, pretrained: str | Path | None
) -> nn.Module:
    from torchvision import models

    model = getattr(models, arch)(weights=None)
    if small_images or in_channels != 3:
        kernel, stride, padding = (3, 1, 1) if small_images else (7, 2, 3)
        model.conv1 = nn.Conv2d(in_channels, 64, kernel, stride=stride, padding=padding, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if small_images:
        model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    model.out_dim = out_dim
    if pretrained is not None:
        _load_pretrained(model, pretrained)
    return model


@register_backbone("resnet18")
def resnet18(*, small_images: bool = False, in_channels: int = 3, pretrained: str | Path | None = None) -> nn.Module:
    """torchvision ResNet-18 without fc, random init (``weights=None``); out_dim 512. Options: see ``resnet50``."""
    return _torchvision_resnet(
        "resnet18", 512, small_images=small_images, in_channels=in_channels, pretrained=pretrained
    )


@register_backbone("resnet34")
def resnet34(*, small_images: bool = False, in_channels: int = 3, pretrained: str | Path | None = None) -> nn.Module:
    """torchvision ResNet-34 without fc, random init (``weights=None``); out_dim 512. Options: see ``resnet50``."""
    return _torchvision_resnet(
        "resnet34", 512, small_images=small_images, in_channels=in_channels, pretrained=pretrained
    )


@register_backbone("resnet50")
def resnet50(*, small_images: bool = False, in_channels: int = 3, pretrained: str | Path | None = None) -> nn.Module:
    """torchvision ResNet-50 without fc, random init (``weights=None``); out_dim 2048.

    Args:
        small_images: 3x3 stride-1 stem and no max-pool, for 32x32 / 28x28 inputs.
        in_channels: image channels (1 for MNIST).
        pretrained: local file holding a state dict (torchvision layout; ``fc.*`` keys ignored),
            loaded with ``torch.load(weights_only=True)``. Nothing is ever downloaded.
    """
    return _torchvision_resnet(
        "resnet50", 2048, small_images=small_images, in_channels=in_channels, pretrained=pretrained
    )
