"""Model families, registered by name in :data:`pyro_moe.registry.MODELS`."""

from pyro_moe.models import (  # noqa: F401  (deep clustering models)
    dmvae,
    gmm,
    moe,  # noqa: F401  (registers the mixture of experts)
    vade,
    vae,
)

from pyro_moe.registry import MODELS

__all__ = ["MODELS"]
