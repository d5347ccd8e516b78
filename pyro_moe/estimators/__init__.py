"""Gradient estimators for the discrete gate, one module per family, registered by name.

``ESTIMATORS[name](**options)`` builds one; see :mod:`pyro_moe.estimators.base` for the interface.
"""

from pyro_moe.estimators import (  # noqa: F401  (register the estimators)
    arsm,
    concrete,
    enum,
    gumbel,
    gumbel_rao,
    indecater,
    nvil,
    question,
    rebar,
    reinforce,
    reinmax,
    relax,
    rloo,
    sum_and_sample,
    unordered,
    vimco,
)
from pyro_moe.estimators.base import Estimator, value_with_gradient_of
from pyro_moe.estimators.objectives import OBJECTIVES
from pyro_moe.registry import ESTIMATORS

__all__ = ["ESTIMATORS", "OBJECTIVES", "Estimator", "value_with_gradient_of"]
