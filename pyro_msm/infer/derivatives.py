r"""Derivatives of a model's log density in its data argument, in one place.

Every estimator and objective gets the score :math:`a(z) = \nabla_z \log q(z)` and the diagonal
of its Jacobian :math:`b_j(z) = \partial a_j / \partial z_j` from here: from the distribution's
closed-form hooks when it has them (:class:`~pyro_msm.distributions.Energy`), for the sequential
networks of :func:`taylor_network` by explicit passes written as ordinary operations (Taylor
mode for the diagonal and directional derivatives, a reverse sweep for the score), otherwise by
automatic differentiation vectorised over rows, particles and coordinate axes. The results keep
their graph to the model parameters, so losses built on them can be differentiated again.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from pyro.distributions import ExpandedDistribution
from torch import Tensor, nn
from torch.distributions import Distribution

from ..distributions.energy import Energy, FunctionEnergy
from ..distributions.neural import EnergyMLP

__all__ = [
    "log_prob",
    "score",
    "diag_jacobian",
    "score_and_diag_jacobian",
    "hessian_vector_product",
    "directional_derivatives",
    "taylor_network",
    "has_closed_form",
    "DIAG_METHODS",
    "ROWWISE_MIN_DIM",
    "TAYLOR_ACTIVATIONS",
]

#: Ways :func:`score_and_diag_jacobian` differentiates a model without a closed form.
DIAG_METHODS = ("auto", "reverse", "rowwise", "taylor")
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


def has_closed_form(fn: Distribution) -> bool:
    """Whether ``fn`` is an :class:`~pyro_msm.distributions.Energy` whose class gives the score
    and the diagonal of its Jacobian in closed form (their cost is then a few operations per
    entry, with no hidden-layer intermediates)."""
    base = _unwrap(fn)
    return (
        isinstance(base, Energy)
        and type(base).score_and_diag_jacobian is not Energy.score_and_diag_jacobian
    )


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
    """The score :math:`\\nabla_z \\log q(z)`, shape of ``z``.

    From the closed-form hook when the distribution has one; for the networks of
    :func:`taylor_network`, from one forward pass and the chain rule written as ordinary
    operations (:func:`_sweep_score`; a loss on it then needs no double backward). Otherwise by
    autodiff: a distribution that scores any rows (batch shape ``()``) is evaluated on ``z``
    flattened to a matrix of rows: a network then runs on 2-D inputs, without the reshapes
    (and their backward and double-backward nodes) that batched inputs add to every layer.
    """
    base = _unwrap(fn)
    if isinstance(base, Energy):
        a = base.score(z)
        if a is not None:
            return a.expand(z.shape)
    plan = taylor_network(fn)
    if plan is not None:
        return _sweep_score(plan[0], plan[1], z)
    with torch.enable_grad():
        point = z if z.requires_grad else z.detach().requires_grad_(True)
        if point.dim() > 2 and fn.batch_shape == torch.Size():
            return _autodiff_score(fn, point.reshape(-1, point.shape[-1])).reshape(point.shape)
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

    - ``"taylor"``: for the networks of :func:`taylor_network` (sequential MLPs with smooth
      activations), one forward pass that carries each coordinate axis's first and second
      directional derivatives through the layers (Taylor mode; no reverse pass inside the
      loss, so the loss's own backward is the only one).

    ``"auto"`` takes ``"taylor"`` where it applies (measured 3-5x faster than torchebm's
    ``vmap(jacrev(grad))`` on its MLP, see ``benchmarks/speed.py``), else ``"rowwise"`` from
    dimension :data:`ROWWISE_MIN_DIM` on where it applies (measured faster there), else
    ``"reverse"``.

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
    plan = taylor_network(fn) if method in ("auto", "taylor") else None
    if method == "taylor" and plan is None:
        raise ValueError(
            f"method 'taylor' needs a FunctionEnergy of a plain nn.Sequential of Linear layers "
            f"and {sorted(t.__name__ for t in TAYLOR_ACTIVATIONS)} activations, got "
            f"{type(base).__name__}; use 'auto'"
        )
    if plan is not None:
        return _taylor_score_and_diag(plan[0], plan[1], z)
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


# -- Taylor mode: first and second directional derivatives in one forward pass -------------------


def _softplus_slope(layer: nn.Softplus, u: Tensor) -> tuple[Tensor, Tensor | None]:
    r""":math:`s = \mathrm{sigmoid}(\beta u)`, the derivative of torch's softplus below its
    threshold, and the entries above it, where torch's softplus is the identity (derivatives 1
    and 0). The mask is None when no entry needs it: where :math:`\exp(-\text{threshold})` is
    under a quarter of ``u``'s machine epsilon (float32 and lower precisions at the default
    threshold 20), :math:`1 + e^{-\beta u}` rounds to 1 above the threshold, so ``s`` is exactly
    1 there and its derivative :math:`s(1-s)` exactly 0: the same numbers without the mask's
    comparison and selects."""
    beta, threshold = float(layer.beta), float(layer.threshold)
    bu = u if beta == 1.0 else u * beta
    s = torch.sigmoid(bu)
    if math.exp(-threshold) < torch.finfo(u.dtype).eps / 4:
        return s, None
    return s, bu > threshold


def _softplus_terms(layer: nn.Softplus, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s, linear = _softplus_slope(layer, u)
    h = torch.nn.functional.softplus(u, float(layer.beta), float(layer.threshold))
    bend = float(layer.beta) * s * (1 - s)
    if linear is None:
        return h, s, bend
    one = torch.ones((), dtype=u.dtype, device=u.device)
    return h, torch.where(linear, one, s), torch.where(linear, 0 * one, bend)


def _tanh_terms(layer: nn.Module, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    t = torch.tanh(u)
    d1 = 1 - t * t
    return t, d1, -2 * t * d1


def _sigmoid_terms(layer: nn.Module, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sigmoid(u)
    d1 = s * (1 - s)
    return s, d1, d1 * (1 - 2 * s)


def _silu_terms(layer: nn.Module, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sigmoid(u)
    return u * s, s * (1 + u * (1 - s)), s * (1 - s) * (2 + u * (1 - 2 * s))


#: Elementwise activations the Taylor pass differentiates in closed form: each maps the
#: pre-activation ``u`` to ``(sigma(u), sigma'(u), sigma''(u))``.
TAYLOR_ACTIVATIONS: dict[type, Callable[[nn.Module, Tensor], tuple[Tensor, Tensor, Tensor]]] = {
    nn.Softplus: _softplus_terms,
    nn.Tanh: _tanh_terms,
    nn.Sigmoid: _sigmoid_terms,
    nn.SiLU: _silu_terms,
}


def _hookless(module: nn.Module) -> bool:
    return not (module._forward_hooks or module._forward_pre_hooks)


def taylor_network(fn: Distribution) -> tuple[nn.Sequential, float] | None:
    r"""The network of an energy that the Taylor pass of :func:`score_and_diag_jacobian` and
    :func:`directional_derivatives` differentiates, or None.

    Recognised: a :class:`~pyro_msm.distributions.FunctionEnergy` (its ``energy`` not
    overridden) whose function is a plain :class:`torch.nn.Sequential` of
    :class:`torch.nn.Linear` layers and activations of :data:`TAYLOR_ACTIVATIONS`, ending in one
    output, or an :class:`~pyro_msm.distributions.EnergyMLP` built of those (whose quadratic
    confinement :math:`\tfrac{c}{2}\lVert x\rVert^2` is added in closed form). Modules with
    hooks (weight or spectral normalisation) and subclasses are left to autodiff.

    :returns: ``(network, c)`` with ``c`` the confinement (0 for a plain network).
    """
    base = _unwrap(fn)
    if not isinstance(base, FunctionEnergy) or type(base).energy is not FunctionEnergy.energy:
        return None
    net, confinement = base.fn, 0.0
    if type(net) is EnergyMLP and _hookless(net):
        net, confinement = net.net, net.confinement
    if type(net) is not nn.Sequential or not _hookless(net) or len(net) == 0:
        return None
    width = None
    for layer in net:
        if not _hookless(layer):
            return None
        if type(layer) is nn.Linear:
            width = layer.out_features
        elif type(layer) not in TAYLOR_ACTIVATIONS:
            return None
    if width != 1 or torch.nn.modules.module._global_forward_hooks:
        return None
    return net, float(confinement)


def _taylor_pass(
    net: nn.Sequential, x: Tensor, directions: Tensor | None
) -> tuple[Tensor, Tensor]:
    """First and second derivatives of the network's scalar output along each direction, by
    forward propagation of value, tangents and second directional derivatives (Taylor mode).

    :param x: points ``(P, d)``.
    :param directions: ``(P, m, d)``, or None for the ``d`` coordinate axes.
    :returns: ``(P, m)`` first and ``(P, m)`` second derivatives (``m = d`` for the axes).
    """
    h = x
    tangent: Tensor | None = directions  # (P, m, k); None: the identity
    curvature: Tensor | None = None  # (P, m, k); None: zero
    pending: tuple[Tensor, Tensor] | None = None  # an activation's (sigma', sigma'') not applied
    last = len(net) - 1
    for i, layer in enumerate(net):
        if tangent is None:  # only before the first linear layer
            tangent = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device).unsqueeze(0)
            if directions is not None:
                tangent = directions
        if type(layer) is nn.Linear:
            w = layer.weight
            h = torch.nn.functional.linear(h, w, layer.bias)
            if pending is not None and i == last:
                # the last activation and the output layer at once: contract with sigma' w and
                # sigma'' w instead of forming the activation's (P, m, k) derivatives
                d1, d2 = pending
                g1, g2 = (d1 * w).mT, (d2 * w).mT  # (P, k, 1)
                first = (tangent @ g1).squeeze(-1)
                second = ((tangent * tangent) @ g2).squeeze(-1)
                if curvature is not None:
                    second = second + (curvature @ g1).squeeze(-1)
                return first, second
            if pending is not None:
                tangent, curvature = _apply_activation(tangent, curvature, *pending)
                pending = None
            tangent = tangent @ w.T
            curvature = None if curvature is None else curvature @ w.T
        else:
            if pending is not None:
                tangent, curvature = _apply_activation(tangent, curvature, *pending)
            h, d1, d2 = TAYLOR_ACTIVATIONS[type(layer)](layer, h)
            pending = (d1.unsqueeze(-2), d2.unsqueeze(-2))
    if pending is not None:
        tangent, curvature = _apply_activation(tangent, curvature, *pending)
    points, m = x.shape[0], tangent.shape[-2]
    first = tangent[..., 0].expand(points, m)
    second = x.new_zeros(()).expand(points, m) if curvature is None else curvature[..., 0]
    return first, second


def _apply_activation(
    tangent: Tensor, curvature: Tensor | None, d1: Tensor, d2: Tensor
) -> tuple[Tensor, Tensor]:
    """Tangents and second derivatives through an elementwise activation (chain rule)."""
    bent = d2 * tangent * tangent
    return d1 * tangent, bent if curvature is None else bent + d1 * curvature


def _taylor_score_and_diag(net: nn.Sequential, confinement: float, z: Tensor):
    """Score and Jacobian diagonal of ``exp(-net(x) - c |x|^2 / 2)`` by one Taylor pass."""
    d = z.shape[-1]
    x = z.reshape(-1, d)
    first, second = _taylor_pass(net, x, None)
    a, b = -first, -second
    if confinement:
        a, b = a - confinement * x, b - confinement
    return a.reshape(z.shape), b.expand(x.shape).reshape(z.shape)


def _activation_slope(layer: nn.Module, u: Tensor, value: bool) -> tuple[Tensor | None, Tensor]:
    """An activation's value at ``u`` (None unless ``value``) and its derivative."""
    if type(layer) is nn.Softplus:
        s, linear = _softplus_slope(layer, u)
        if linear is not None:
            s = torch.where(linear, torch.ones((), dtype=u.dtype, device=u.device), s)
        return (layer(u) if value else None), s
    h, d1, _ = TAYLOR_ACTIVATIONS[type(layer)](layer, u)
    return h, d1


def _sweep_score(net: nn.Sequential, confinement: float, z: Tensor) -> Tensor:
    r"""Score of ``exp(-net(x) - c |x|^2 / 2)`` for the networks of :func:`taylor_network`: a
    forward pass that keeps each activation's derivative, then the chain rule back through the
    layers written as ordinary operations (``g <- g * sigma'(u)``, ``g <- g W``). Its value is
    the reverse-mode gradient; a loss built on it is differentiated by one ordinary backward
    pass, where ``torch.autograd.grad(..., create_graph=True)`` leaves a graph of backward
    nodes whose own derivatives (double backward) that pass must run. The output layer and the
    last activation's value are not evaluated (the score does not need them)."""
    d = z.shape[-1]
    x = z.reshape(-1, d)
    layers = list(net)
    activations = [i for i, layer in enumerate(layers) if type(layer) is not nn.Linear]
    last = activations[-1] if activations else -1
    h, slopes = x, []
    for i, layer in enumerate(layers[: last + 1]):
        if type(layer) is nn.Linear:
            h = torch.nn.functional.linear(h, layer.weight, layer.bias)
        else:
            h, slope = _activation_slope(layer, h, value=i < last)
            slopes.append(slope)
    # g: minus d net / d (the current layer's output), the sign taken at the output (a (1, k)
    # weight) rather than on the (P, d) score; None: minus one
    g: Tensor | None = None
    for layer in reversed(layers):
        if type(layer) is nn.Linear:
            g = -layer.weight if g is None else g @ layer.weight
        else:
            slope = slopes.pop()
            g = -slope if g is None else g * slope
    a = g.expand(x.shape)
    if confinement:
        a = a - confinement * x
    return a.reshape(z.shape)


def directional_derivatives(fn: Distribution, z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    r"""Derivatives of :math:`\log q` along directions: :math:`v^\top a(z)` and
    :math:`v^\top H(z)\, v` (``H`` the Hessian of :math:`\log q`) for ``m`` directions per point.

    For networks of :func:`taylor_network` one forward Taylor pass gives both (no reverse pass,
    cost ``m`` forward passes); otherwise :func:`hessian_vector_product` (closed form or one
    extra reverse pass).

    :param fn: the data distribution.
    :param z: points ``(..., d)``.
    :param v: directions ``(..., m, d)``, batch-broadcastable with ``z``.
    :returns: ``(v^T a, v^T H v)``, each of shape ``(..., m)``.
    """
    d = z.shape[-1]
    shape = torch.broadcast_shapes(z.shape[:-1], v.shape[:-2])
    plan = taylor_network(fn)
    if plan is not None:
        net, c = plan
        x = z.expand(shape + (d,)).reshape(-1, d)
        dirs = v.expand(shape + v.shape[-2:]).reshape((x.shape[0],) + v.shape[-2:])
        first, second = _taylor_pass(net, x, dirs)
        along, curv = -first, -second
        if c:
            along = along - c * (dirs @ x.unsqueeze(-1)).squeeze(-1)
            curv = curv - c * (dirs * dirs).sum(-1)
        return along.reshape(shape + (-1,)), curv.reshape(shape + (-1,))
    zz = z.unsqueeze(-2).expand(shape + v.shape[-2:])
    a, hv = hessian_vector_product(fn, zz, v)
    return (a * v).sum(-1), (hv * v).sum(-1)


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
        (hv,) = torch.autograd.grad(
            (a * v).sum(), point, create_graph=True, allow_unused=True, materialize_grads=True
        )
    return a.expand(shape), hv
