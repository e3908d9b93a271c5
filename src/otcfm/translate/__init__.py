"""Unpaired translation between groups of images through a latent flow.

Unpaired translation between groups of images through a flow in an autoencoder's latent
space (Tong et al. 2024, §5.4): an objective and a recipe on the training engine, beside
``otcfm.train`` and ``otcfm.trajectory``.

- :mod:`otcfm.translate.autoencoder`: :class:`AutoEncoder`, trained by
  :func:`fit_autoencoder` (standardised latents), saved and loaded as plain tensors.
- :mod:`otcfm.translate.latent`: groups of classes, :func:`translate` (encode, flow, decode)
  and :func:`translation_scores` (latent MMD, distance moved, target-class rate).
"""

from otcfm.translate.autoencoder import (
    AutoEncoder,
    AutoEncoderFit,
    ReconstructionObjective,
    fit_autoencoder,
    load_autoencoder,
    save_autoencoder,
)
from otcfm.translate.latent import (
    FlowSpec,
    Translation,
    class_indices,
    group_images,
    translate,
    translation_scores,
)

__all__ = [
    "AutoEncoder",
    "AutoEncoderFit",
    "FlowSpec",
    "ReconstructionObjective",
    "Translation",
    "class_indices",
    "fit_autoencoder",
    "group_images",
    "load_autoencoder",
    "save_autoencoder",
    "translate",
    "translation_scores",
]
