"""Velocity-field networks with the library's calling convention ``model(x, t, **cond)``.

:class:`MLP` is the paper's network for 2-D and single-cell tasks (3 hidden layers of width 64,
SELU, time concatenated to the input; docs/reference.md §4). :class:`UNet` is the ADM-style
image network (the paper's CIFAR-10 model is its ``cifar10`` preset). :class:`DriftScore` pairs
a drift and a score network for SF2M (its forward is the drift). Models are also reachable by
name through the :data:`MODELS` registry: ``MODELS.get("mlp", dim=2)``,
``MODELS.get("unet", dim=(1, 8, 8))``.

Class conditions: a model built with ``num_classes=K`` takes labels ``y`` in [0, K]; label K
(``model.null_class``) is the null class, "no condition", used by classifier-free guidance.
"""

from ._common import MODELS
from .mlp import ACTIVATIONS, HEADS, MLP, DriftScore, get_activation
from .unet import UNET_PRESETS, UNet

__all__ = [
    "ACTIVATIONS",
    "HEADS",
    "MLP",
    "MODELS",
    "UNET_PRESETS",
    "DriftScore",
    "UNet",
    "get_activation",
]
