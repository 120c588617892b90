"""MACs and parameter counts of a PyTorch model, from one forward pass with hooks.

What is counted: multiply-accumulates of every ``nn.Conv1d/2d/3d`` (grouped and depthwise
included: ``output elements x in_channels/groups x kernel volume``) and every ``nn.Linear``
(``output elements x in_features``).  Bias additions, batch norm, activations, pooling,
residual adds and concatenations are not counted (each is at most one operation per
activation element, under 2% of a conv net's MACs).  ``params`` is the number of elements of
every parameter of the model, batch-norm scales and shifts included (buffers such as running
means are not parameters and are not counted).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs per conv/linear layer name for one forward pass of a zero input of ``input_shape``.

    A layer that runs several times in one forward pass has its MACs summed.
    """
    import torch
    from torch import nn

    counts: dict[str, int] = {}
    handles = []

    def hook(name: str):
        def _count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if isinstance(module, nn.Linear):
                macs = output.numel() * module.in_features
            else:
                assert isinstance(module, nn.modules.conv._ConvNd)
                per_out = (module.in_channels // module.groups) * math.prod(module.kernel_size)
                macs = output.numel() * per_out
            counts[name] = counts.get(name, 0) + int(macs)

        return _count

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(*input_shape, dtype=dtype, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counts


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (all parameters, shared ones counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, params) for one forward pass of an input of ``input_shape`` = (N, C, H, W).

    MACs cover conv and linear layers only (see the module docstring); with N = 1 they are
    per image.  The model's train/eval mode is restored.
    """
    return sum(layer_macs(model, input_shape).values()), count_params(model)
