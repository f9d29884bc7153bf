"""Guides (variational conditionals :math:`q_\\phi(x_u \\mid x_o)`) for the missing coordinates
of :func:`~pyro_msm.observe` sites."""

from .amortized import AmortizedNormal, no_guide

__all__ = ["AmortizedNormal", "no_guide"]
