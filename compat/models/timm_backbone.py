"""timm backbones in recipes: ``backbone: timm:NAME`` (the optional ``timm`` extra, ``pip install 'compat[timm]'``).

The network is built by ``timm.create_model(NAME, pretrained=False, num_classes=0)``, so nothing is
ever downloaded; weights come from a local file only (``backbone_kwargs: {pretrained: PATH}``: a
state dict saved with ``torch.save`` or a ``.safetensors`` file, read without unpickling code;
classifier keys are ignored). Other ``backbone_kwargs`` go to ``timm.create_model`` (``in_chans`` is
``in_channels`` here, as for the other backbones).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compat.errors import CompatError

__all__ = ["TIMM_PREFIX", "timm_backbone"]

TIMM_PREFIX = "timm:"


class _TimmBackbone(nn.Module):
    """A timm model without its classifier: (N, C, H, W) -> (N, num_features)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.out_dim = int(model.num_features)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


def timm_backbone(name: str, *, in_channels: int = 3, pretrained: str | Path | None = None,
                  **options: Any) -> nn.Module:
    """Build ``timm:NAME`` (``name`` without the prefix); ``pretrained`` is a local weights file.

    Raises:
        CompatError: timm is not installed, the model name is unknown, an option is refused, or the
            weights do not fit.
    """
    try:
        import timm
    except ImportError:
        raise CompatError(f"backbone {TIMM_PREFIX}{name}: needs timm (pip install 'compat[timm]')") from None
    if isinstance(pretrained, bool):
        raise CompatError(f"backbone {TIMM_PREFIX}{name}: pretrained: expected a local weights file, got "
                          f"{pretrained!r}; compat never downloads weights")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise CompatError(f"backbone {TIMM_PREFIX}{name}: timm has no model {name!r}{hint}")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels, **options)
    except TypeError as exc:
        raise CompatError(f"backbone {TIMM_PREFIX}{name}: {exc}") from None
    if pretrained is not None:
        _load_weights(model, Path(pretrained), name)
    return _TimmBackbone(model)


def _load_weights(model: nn.Module, path: Path, name: str) -> None:
    where = f"backbone {TIMM_PREFIX}{name}: pretrained {str(path)!r}"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unreadable or unsafe file is bad input)
        raise CompatError(f"{where}: cannot load weights ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CompatError(f"{where}: not a state dict (a mapping of names to tensors)")
    head = set(getattr(model, "pretrained_cfg", {}).get("classifier", ()) or ())
    state = {k: v for k, v in state.items() if k.rsplit(".", 1)[0] not in head}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        shown = ", ".join([*missing, *unexpected][:5])
        raise CompatError(f"{where}: does not match the model ({len(missing)} missing, {len(unexpected)} "
                          f"unexpected keys: {shown})")
