"""Model families, registered by name in :data:`pyro_moe.registry.MODELS`."""

from pyro_moe.models import moe  # noqa: F401  (registers the mixture of experts)

from pyro_moe.registry import MODELS

__all__ = ["MODELS"]
