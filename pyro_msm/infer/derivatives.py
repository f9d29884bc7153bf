r"""Derivatives of a model's log density in its data argument, in one place.

Every estimator and objective gets the score :math:`a(z) = \nabla_z \log q(z)` and the diagonal
of its Jacobian :math:`b_j(z) = \partial a_j / \partial z_j` from here: from the distribution's
closed-form hooks when it has them (:class:`~pyro_msm.distributions.Energy`), otherwise by
automatic differentiation vectorised over rows, particles and coordinate axes. The results keep
their graph to the model parameters, so losses built on them can be differentiated again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from pyro.distributions import ExpandedDistribution
from torch import Tensor
from torch.distributions import Distribution

from ..distributions.energy import Energy

__all__ = [
    "log_prob",
    "score",
    "diag_jacobian",
    "score_and_diag_jacobian",
    "hessian_vector_product",
    "DIAG_METHODS",
    "ROWWISE_MIN_DIM",
]

#: Ways :func:`score_and_diag_jacobian` differentiates a model without a closed form.
DIAG_METHODS = ("auto", "reverse", "rowwise")
#: Smallest dimension at which ``"auto"`` picks ``"rowwise"`` (below it ``"reverse"`` was faster:
#: on torchebm's MLP energy, 2 x 64 Softplus, n = 1000, one thread, ``"reverse"`` took 0.83x the
#: time of torchebm's ``vmap(jacrev(grad))`` at d = 10 and 2.6x at d = 50, ``"rowwise"`` 0.91x
#: and 0.90x; see ``benchmarks/speed.py``).
ROWWISE_MIN_DIM = 16


def _unwrap(fn: Distribution) -> Distribution:
    """Strip wrappers that only broadcast the batch shape."""
    while isinstance(fn, ExpandedDistribution):
        fn = fn.base_dist
    return fn


@contextlib.contextmanager
def _without_validation(fn: Distribution) -> Iterator[None]:
    """Switch off argument validation on ``fn`` and its wrapped distributions (a validation check
    is data-dependent control flow, which :func:`torch.func.vmap` cannot trace)."""
    chain = []
    node = fn
    while isinstance(node, Distribution):
        chain.append((node, getattr(node, "_validate_args", False)))
        node = getattr(node, "base_dist", None)
    for d, _ in chain:
        d._validate_args = False
    try:
        yield
    finally:
        for d, flag in chain:
            d._validate_args = flag


def log_prob(fn: Distribution, z: Tensor) -> Tensor:
    """Unnormalised log density of each row of ``z`` (``(..., d) -> (...)``)."""
    with _without_validation(fn):
        return fn.log_prob(z)


def score(fn: Distribution, z: Tensor) -> Tensor:
    """The score :math:`\\nabla_z \\log q(z)`, shape of ``z``."""
    base = _unwrap(fn)
    if isinstance(base, Energy):
        a = base.score(z)
        if a is not None:
            return a.expand(z.shape)
    with torch.enable_grad():
        point = z if z.requires_grad else z.detach().requires_grad_(True)
        return _autodiff_score(fn, point)


def _autodiff_score(fn: Distribution, point: Tensor) -> Tensor:
    (a,) = torch.autograd.grad(log_prob(fn, point).sum(), point, create_graph=True)
    return a


def diag_jacobian(func: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    r"""A vector function of each row and the diagonal of its Jacobian,
    :math:`\partial f_j / \partial x_j`, keeping the graph to any parameters of ``func``.

    ``func`` maps ``(..., d)`` to ``(..., d)`` row by row (rows must not interact). The diagonal
    comes from ``d`` reverse-mode products, one per coordinate axis, batched
    (``is_grads_batched``, i.e. :func:`torch.func.vmap` over the backward pass) over all rows.

    :returns: ``(f(x), diag)``, each of the shape of ``x``.
    """
    d = x.shape[-1]
    basis = torch.eye(d, dtype=x.dtype, device=x.device).reshape((d,) + (1,) * (x.dim() - 1) + (d,))
    with torch.enable_grad():
        point = x if x.requires_grad else x.detach().requires_grad_(True)
        value = func(point)
        if not value.requires_grad:  # constant in x
            return value, torch.zeros_like(value)
        (rows,) = torch.autograd.grad(
            value,
            point,
            grad_outputs=basis.expand((d,) + value.shape),
            is_grads_batched=True,
            create_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
    return value, torch.diagonal(rows.movedim(0, -2), dim1=-2, dim2=-1)


def _row_separable(base: Distribution) -> bool:
    """Whether ``base.log_prob`` of one row is a scalar (no batch dimension of its own)."""
    return base.batch_shape == torch.Size()


def _rowwise_score_and_diag(base: Distribution, z: Tensor) -> tuple[Tensor, Tensor]:
    """Score and Jacobian diagonal by :func:`torch.func.vmap` over rows of
    :func:`torch.func.jacrev` of the score, the score coming back as the auxiliary output (one
    reverse pass for both); particles and rows are flattened into one batch, so the cost is
    linear in their product."""
    d = z.shape[-1]

    def row_score(row: Tensor) -> tuple[Tensor, Tensor]:
        a = torch.func.grad(base.log_prob)(row)
        return a, a

    def row_terms(row: Tensor) -> tuple[Tensor, Tensor]:
        jac, a = torch.func.jacrev(row_score, has_aux=True)(row)
        return a, torch.diagonal(jac)

    with _without_validation(base):
        a, b = torch.func.vmap(row_terms)(z.reshape(-1, d))
    return a.reshape(z.shape), b.reshape(z.shape)


def score_and_diag_jacobian(
    fn: Distribution, z: Tensor, method: str = "auto"
) -> tuple[Tensor, Tensor]:
    r"""The score and the diagonal of its Jacobian at each row of ``z``.

    From the closed-form hook when the distribution has one, otherwise by automatic
    differentiation, in one of two ways (both exact, with the graph to the parameters kept):

    - ``"reverse"``: :func:`diag_jacobian` of the autodiff score, ``d`` reverse passes over the
      whole batch batched with ``is_grads_batched``;
    - ``"rowwise"``: :func:`torch.func.vmap` over rows of :func:`torch.func.jacrev` of the
      score (the score as its auxiliary output), for distributions whose ``log_prob`` of one
      row is a scalar (batch shape ``()`` once Pyro's plate expansion is removed).

    ``"auto"`` takes ``"rowwise"`` from dimension :data:`ROWWISE_MIN_DIM` on where it applies
    (measured faster there), ``"reverse"`` otherwise.

    :param fn: the data distribution (event shape ``(d,)``), batch-broadcastable with ``z``.
    :param z: points ``(..., d)``.
    :param method: one of :data:`DIAG_METHODS`.
    :returns: ``(a, b)``, each of the shape of ``z``.
    """
    if method not in DIAG_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {DIAG_METHODS}")
    base = _unwrap(fn)
    if isinstance(base, Energy):
        closed = base.score_and_diag_jacobian(z)
        if closed is not None:
            a, b = closed
            return a.expand(z.shape), b.expand(z.shape)
    if method == "auto":
        rowwise = z.shape[-1] >= ROWWISE_MIN_DIM and _row_separable(base)
        method = "rowwise" if rowwise else "reverse"
    if method == "rowwise":
        if not _row_separable(base):
            raise ValueError(
                f"method 'rowwise' needs a distribution with batch shape (), got "
                f"{type(base).__name__} with batch shape {tuple(base.batch_shape)}; use 'reverse'"
            )
        return _rowwise_score_and_diag(base, z)
    return diag_jacobian(lambda point: _autodiff_score(fn, point), z)


def hessian_vector_product(fn: Distribution, z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """The score at ``z`` and the Hessian of ``log q`` applied to ``v``, both of the shape of
    ``z``: from the distribution's closed-form hook
    (:meth:`~pyro_msm.distributions.Energy.hessian_vector_product`) when it has one, else one
    extra reverse pass over the score (closed-form or autodiff), whatever the dimension."""
    base = _unwrap(fn)
    shape = torch.broadcast_shapes(z.shape, v.shape)
    if isinstance(base, Energy):
        closed = base.hessian_vector_product(z, v)
        if closed is not None:
            a, hv = closed
            return a.expand(shape), hv.expand(shape)
    with torch.enable_grad():
        point = z if z.requires_grad else z.detach().requires_grad_(True)
        a = base.score(point) if isinstance(base, Energy) else None
        if a is None:
            a = _autodiff_score(fn, point)
        (hv,) = torch.autograd.grad((a * v).sum(), point, create_graph=True)
    return a.expand(shape), hv
