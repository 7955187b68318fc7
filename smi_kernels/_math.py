"""Scalar facts about the SMI transform shared by every backend.

    m(rho)  = -1/2 log(1 - rho^2 + eps)
    m'(rho) = rho / (1 - rho^2 + eps)

For rho in [-1, 1] and eps > 0, ``1 - rho^2 + eps`` lies in ``[eps, 1 + eps]``, so

    |m|  <= m_max  = 1/2 max(log(1/eps), log(1 + eps))
    |m'| <= 1/eps                       (m' is increasing, largest at rho = 1)

and a redundancy entry of G, ``2 w m m'`` with w <= 2, is bounded by ``4 m_max / eps``. The Triton
path uses that bound to store G in float16 without overflow.
"""

from __future__ import annotations

import math

#: lower bound of the row scale s_i (a constant row standardises to zero instead of NaN)
ROW_SCALE_FLOOR = 1e-12


def dependency_max(eps: float) -> float:
    """Largest ``|m(rho)|`` over rho in [-1, 1]."""
    return 0.5 * max(math.log(1.0 / eps), math.log1p(eps))


def redundancy_gradient_bound(eps: float) -> float:
    """Bound on ``|dL_red / dS_pq|`` for one entry: ``4 m_max / eps``."""
    return 4.0 * dependency_max(eps) / eps


def float16_gradient_scale(eps: float, limit: float = 32768.0) -> float:
    """Power of two ``gamma <= 1`` with ``gamma * redundancy_gradient_bound(eps) <= limit``."""
    bound = redundancy_gradient_bound(eps)
    if bound <= limit:
        return 1.0
    return 2.0 ** -math.ceil(math.log2(bound / limit))
