"""The cost model: multiply-adds (MACs) of SMI and of the losses it is compared with.

Convention: one multiply-add of a matrix product is one MAC; element-wise work is not counted.
fvcore counts the same way (one MAC = one "flop"); ``torch.utils.flop_counter`` counts two
(a multiply and an add), hence the ``flop_formula_*`` functions return ``2 * MACs``.

V views of shape (N, D), P = V N stacked rows (docs/design.md, sections 2 and 4):

    naive SMI forward       V (V + 1) / 2 N^2 D    one N x N block per pair u <= v
                                                   (V = 2: AB, AA, BB -> 3 N^2 D)
    naive SMI backward      V (V + 1) N^2 D        autograd: two products per block
    fused SMI forward       P^2 D / 2              the upper triangle of S = Z Z^T
    fused SMI backward      P^2 D                  dZ = G_sym Z
    Barlow Twins            N D^2                  the D x D cross-correlation z_a^T z_b
    VICReg                  2 N D^2                the two D x D covariances
    NT-Xent                 3 N^2 D                the AB, AA, BB similarity blocks

Per rank under torch.distributed, W ranks of n samples per view, P_local = V n,
P_global = W P_local (:func:`distributed_macs`; forward and backward):

    local    (no gather)    P_local^2 D / 2,  P_local^2 D     the fused counts of the local batch
    gather   (=True)        P_global^2 D / 2, P_global^2 D    the whole global S on every rank
    sharded  ("sharded")    P_global^2 D / (2 W),             this rank's share of S (each pair
                            P_local P_global D                formed on one rank) and its rows
                                                              of G_sym Z: 1/W of gather mode

Nothing here touches a device: these are integers from shapes. :func:`fvcore_handles` gives
fvcore the fused op's cost, since fvcore cannot see inside a Triton kernel.

Examples:
    >>> from smi_kernels import flops
    >>> flops.naive_forward_macs(2048, 8192) / 1e9
    103.079215104
    >>> flops.fused_forward_macs(2048, 8192) / 1e9
    68.719476736
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from smi_kernels import schedule

FORWARD_OP = "smi_kernels::smi_forward"
BACKWARD_OP = "smi_kernels::smi_backward"


def _check(n: int, d: int, views: int = 2) -> None:
    if n < 1 or d < 1 or views < 1:
        raise ValueError(f"n, d and views must be positive, got n={n}, d={d}, views={views}")


def naive_forward_macs(n: int, d: int, views: int = 2) -> int:
    """MACs of the naive SMI forward: ``V (V + 1) / 2 * N^2 D`` (one N x N block per u <= v)."""
    _check(n, d, views)
    return views * (views + 1) // 2 * n * n * d


def naive_backward_macs(n: int, d: int, views: int = 2) -> int:
    """MACs of autograd through the naive forward: ``V (V + 1) N^2 D`` (two products a block)."""
    return 2 * naive_forward_macs(n, d, views)


def fused_forward_macs(n: int, d: int, views: int = 2) -> int:
    """MACs of the fused forward: ``P^2 D / 2`` with ``P = V N`` (the upper triangle of S)."""
    _check(n, d, views)
    p = views * n
    return p * p * d // 2


def fused_backward_macs(n: int, d: int, views: int = 2) -> int:
    """MACs of the fused backward: ``P^2 D`` with ``P = V N`` (``dZ = G_sym Z``)."""
    _check(n, d, views)
    p = views * n
    return p * p * d


def barlow_macs(n: int, d: int) -> int:
    """MACs of the Barlow Twins forward: ``N D^2`` (the D x D cross-correlation)."""
    _check(n, d)
    return n * d * d


def vicreg_macs(n: int, d: int) -> int:
    """MACs of the VICReg forward: ``2 N D^2`` (one D x D covariance per view)."""
    _check(n, d)
    return 2 * n * d * d


def ntxent_macs(n: int, d: int) -> int:
    """MACs of the NT-Xent forward as written with three blocks: ``3 N^2 D`` (AB, AA, BB)."""
    _check(n, d)
    return 3 * n * n * d


DISTRIBUTED_MODES = ("local", "gather", "sharded")


def sharded_forward_macs(n_local: int, d: int, world: int, views: int = 2) -> int:
    """MACs of one rank's sharded forward: ``P_local^2 W D / 2 = P_global^2 D / (2 W)``.

    Its own triangle (P_local^2 / 2), K = (W - 1) // 2 whole P_local x P_local blocks with other
    ranks, and for even W half of one more (``schedule.half_blocks``: W halves of a block): every
    pair of rank blocks is formed on one rank, so this is exactly 1/W of gather mode's fused
    triangle ``P_global^2 D / 2`` (see :mod:`smi_kernels.schedule`). Counted as the mathematical
    share; the Triton kernels round the half block to whole tiles (``P_local B / 2`` entries more on
    the upper rank of the pair, as many fewer on the lower, B the tile).
    """
    _check(n_local, d, views)
    if world < 1:
        raise ValueError(f"world must be positive, got {world}")
    p_local = views * n_local
    return p_local * p_local * schedule.half_blocks(world) * d // 2


def sharded_backward_macs(n_local: int, d: int, world: int, views: int = 2) -> int:
    """MACs of one rank's sharded backward: ``P_local P_global D`` (``G_sym[R_r, :] Z``), exactly
    1/W of gather mode's ``G_sym Z``."""
    _check(n_local, d, views)
    if world < 1:
        raise ValueError(f"world must be positive, got {world}")
    p_local = views * n_local
    return p_local * world * p_local * d


def distributed_macs(
    n_local: int, d: int, world: int, views: int = 2, mode: str = "sharded"
) -> tuple[int, int]:
    """``(forward, backward)`` MACs on one rank of W with ``n_local`` samples per view.

    ``mode``: "local" (each rank its own batch), "gather" (the global batch whole on every rank,
    fused counts) or "sharded" (each rank its share of the global S and its rows of dZ).

    Examples:
        >>> from smi_kernels.flops import distributed_macs
        >>> [sum(distributed_macs(256, 8192, 8, mode=m)) / 1e9 for m in ("gather", "sharded")]
        [206.158430208, 25.769803776]
    """
    if mode == "local":
        return fused_forward_macs(n_local, d, views), fused_backward_macs(n_local, d, views)
    if mode == "gather":
        n = world * n_local
        return fused_forward_macs(n, d, views), fused_backward_macs(n, d, views)
    if mode == "sharded":
        return (
            sharded_forward_macs(n_local, d, world, views),
            sharded_backward_macs(n_local, d, world, views),
        )
    raise ValueError(f"mode must be one of {DISTRIBUTED_MODES}, got {mode!r}")


def flop_formula_forward(z_shape: Sequence[int], *args: Any, **kwargs: Any) -> int:
    """``torch.utils.flop_counter`` formula of ``smi_forward``: ``2 * fused_forward_macs``.

    ``z_shape`` is the shape (V, N, D) of the stacked views; the other arguments are ignored.
    """
    views, n, d = z_shape
    return 2 * fused_forward_macs(n, d, views=views)


def flop_formula_backward(
    grad_shape: Sequence[int], zh_shape: Sequence[int], *args: Any, **kwargs: Any
) -> int:
    """``torch.utils.flop_counter`` formula of ``smi_backward``: ``2 * fused_backward_macs``.

    ``zh_shape`` (the second argument, after the incoming gradient) is (V, N, D).
    """
    views, n, d = zh_shape
    return 2 * fused_backward_macs(n, d, views=views)


def fvcore_handles() -> dict[str, Callable[[list[Any], list[Any]], int]]:
    """``{op name: handle}`` for ``FlopCountAnalysis(...).set_op_handle(**handles)``.

    fvcore traces with ``torch.jit.trace`` and cannot look inside a Triton kernel; these handles
    read the traced op's input shapes and return the cost model's MACs (fvcore's "flops"):
    ``smi_forward(z (V, N, D), ...)`` -> :func:`fused_forward_macs`,
    ``smi_backward(grad, zh (V, N, D), ...)`` -> :func:`fused_backward_macs`.

    Examples:
        >>> from smi_kernels.flops import fvcore_handles
        >>> sorted(fvcore_handles())
        ['smi_kernels::smi_backward', 'smi_kernels::smi_forward']
    """
    from fvcore.nn.jit_handles import get_shape

    def forward_handle(inputs: list[Any], outputs: list[Any]) -> int:
        views, n, d = get_shape(inputs[0])
        return fused_forward_macs(n, d, views=views)

    def backward_handle(inputs: list[Any], outputs: list[Any]) -> int:
        views, n, d = get_shape(inputs[1])
        return fused_backward_macs(n, d, views=views)

    return {FORWARD_OP: forward_handle, BACKWARD_OP: backward_handle}
