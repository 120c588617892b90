"""Demo model zoo and user-model loading.  Importing this package imports nothing heavy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hwcompress.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

ZOO_NAMES: tuple[str, ...] = ("vgg-small", "resnet-20", "mobilenetv2-small")


def is_zoo_name(name: str) -> bool:
    return name in ZOO_NAMES


def build_model(name: str, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """A freshly initialised zoo model (``name`` from :data:`ZOO_NAMES`)."""
    from hwcompress.zoo.models import MODELS

    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; built-in models: {', '.join(ZOO_NAMES)} (or give package.module:factory)")
    return MODELS[name](in_channels=in_channels, num_classes=num_classes)
