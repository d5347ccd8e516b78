"""Model families, registered by name in :data:`pyro_moe.registry.MODELS`."""

from pyro_moe.models import (  # noqa: F401  (register the models)
    bayes_moe,
    cat_vae,
    dlgmm,
    dmvae,
    gmm,
    mixture_of_vaes,
    moe,
    vade,
    vae,
    vae_moe,
)

from pyro_moe.registry import MODELS

__all__ = ["MODELS"]
