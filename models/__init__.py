"""Model families, registered by name in :data:`pyro_moe.registry.MODELS`."""

from pyro_moe.models import (  # noqa: F401  (register the models)
    bayes_moe,
    cat_vae,
    dmvae,
    gmm,
    moe,
    vade,
    vae,
    vae_moe,
)

from pyro_moe.registry import MODELS

__all__ = ["MODELS"]
