"""``gumbel`` and ``st-gumbel``: a relaxed sample in the likelihood, the categorical KL exact.

Jang et al.'s objective for a gate with prior p(c) and posterior q(c) (Gumbel-softmax):

    L_tau = E_g[ log p(x, y | w) ] - KL(q(c) || p(c)),   w = softmax((logits_q + g) / tau)

* ``gumbel``: w is the relaxed sample; gradient by reparameterisation, biased for the discrete
  ELBO (the likelihood is evaluated at a point inside the simplex).
* ``st-gumbel``: straight-through: the forward pass uses the exact one-hot onehot(argmax w), so
  the value is an unbiased estimate of the discrete ELBO, and the backward pass uses the relaxed
  sample's gradient (biased).

With q(c|x) = p(c|x) (the ``gate`` guide) the KL vanishes and L_tau is the relaxed Jensen bound
sum_k p(k|x) log p(y|x, k) of the question on the Jensen bound for mixtures of experts.

References:
    1. E. Jang, S. Gu, B. Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    2. Y. Bengio, N. Leonard, A. Courville, "Estimating or Propagating Gradients Through Stochastic
       Neurons for Conditional Computation", arXiv:1308.3432, 2013 (straight-through).
"""

from __future__ import annotations

from pyro_moe.estimators.relaxed import RelaxedEstimator
from pyro_moe.registry import ESTIMATORS


@ESTIMATORS.register("gumbel")
class GumbelSoftmax(RelaxedEstimator):
    """Gumbel-softmax sample in the likelihood, analytic categorical KL (Jang et al. 2017)."""

    name = "gumbel"
    mode = "soft"
    bias = "likelihood at a relaxed point inside the simplex (KL exact); shrinks as tau -> 0"


@ESTIMATORS.register("st-gumbel")
class StraightThroughGumbel(RelaxedEstimator):
    """Straight-through Gumbel: exact one-hot forward, relaxed gradient backward."""

    name = "st-gumbel"
    mode = "hard"
    bias = (
        "straight-through: one-hot forward, relaxed Jacobian backward; does not vanish as tau -> 0"
    )
