"""Fold ``BatchNorm -> unit`` into per-channel threshold compares on the BatchNorm's input.

In eval mode BatchNorm is the per-channel affine map ``z = a x + b`` with
``a = gamma / sqrt(var + eps)`` and ``b = beta - a * mean``. A hard threshold only asks whether ``z``
lies above a threshold ``theta``, so ``unit(BN(x))`` is a per-channel compare of ``x`` itself:

    a > 0:   z > theta  <=>  x > t        t = (theta - b) / a
    a < 0:   z > theta  <=>  x < t        (the direction flips)
    a = 0:   z = b is constant             the unit outputs the constant unit(b)

Sign and step have one threshold (``theta = 0``) and two output levels; qrelu with ``n`` thresholds
``theta_k = k / (n - 1)`` has ``n + 1`` levels and outputs
``(1/n) * #{k : z > theta_k}``, which equals ``clip(ceil((n - 1) z), 0, n) / n``. (``levels`` means
the number of output values everywhere in this package, as in :mod:`lightning_ftprop.nn`.)
:class:`FoldedThreshold` computes, per threshold and channel,

    d = s * (x - t)              s = -1 where a < 0, else +1 (the multiply is left out when no s is -1)
    on = 1 if d > 0 else 0       (as clip(ceil(d), 0, 1), so NaN stays NaN)

and for ``a = 0`` sets ``t = -inf`` (always on, ``b > theta``) or ``t = +inf`` (always off).
Where a conv/linear feeds the BatchNorm (and nothing else), its output channels with ``a < 0`` are
negated instead (weights and bias; exact in float), so that every ``s`` is +1 and the compare is one
subtraction: the folded unit then costs ``Sub, Clip, Ceil`` (plus ``Mul, Sub`` for sign's +-1).

``x - t`` is zero in float exactly when ``x == t``, and has the sign of the real difference, so the
compare itself never rounds. ``t`` is computed in float64 and rounded *towards the side that keeps
the compare exact* (down where ``s = +1``, up where ``s = -1``): for every float32 ``x`` the folded
unit gives what the real-valued ``unit(a x + b)`` gives (up to the float64 rounding of ``t``, about
1e-16 relative, far below float32's resolution).

Edge cases:

* **Ties.** ``x == t`` exactly means ``z == theta`` exactly: the unit is off (sign -1, step 0, qrelu
  does not count that threshold), as the forward conventions say.
* **gamma = 0.** The channel is constant: ``unit(beta)``; ``x`` is ignored, except that a NaN or
  infinite ``x`` gives NaN (``x - t`` is NaN), as ``0 * x`` does in BatchNorm.
* **Rounding.** The *unfolded* model computes ``z`` in float32 (``x * a32 + b32``: ``a32`` and ``b32``
  already rounded, then two more roundings) and can land on the other side of ``theta`` when ``x`` is
  within a few ulps of ``t``; such a unit flips, and the folded model is the one that agrees with real
  arithmetic. Measured (``test_folded_thresholds_are_exact_and_the_float_bn_flips_only_near_a_threshold``,
  64 channels with random BN statistics, 1.28 M units per case): for N(0, 1) inputs no unit flipped
  (sign and qrelu with 5 thresholds); for inputs placed within 4 ulp of a threshold 9.1 % (sign) and
  12.4 % (qrelu) of the units flipped. On the four paper networks with random BN statistics (gamma
  of both signs, one gamma = 0) no class changed and the median relative logit difference was 0
  (256 random inputs; 128 for AlexNet; ``tests/test_export.py``).
* **MaxPool between BN and the unit** (the DoReFa AlexNet). ``max`` commutes with an increasing
  map, and the negation above makes every ``a >= 0``, so the chain folds. Without a conv/linear to
  negate (and some ``a < 0``), or with any other module in between, the chain is left as it is
  (frozen, unfolded).
* Only eval-mode BatchNorm with running statistics folds; ``track_running_stats=False`` is left.
"""

from __future__ import annotations

import copy
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from lightning_ftprop.export.frozen import FrozenUnit, decode_codes, freeze, thresholds_of

__all__ = ["FoldedThreshold", "folded_unit", "fold_thresholds"]

# --- folding ----------------------------------------------------------------------------------------


class FoldedThreshold(nn.Module):
    """``BatchNorm -> unit`` as per-channel threshold compares on the BatchNorm's input ``x``.

    Buffers ``threshold`` and ``direction`` have shape ``(thresholds, channels)``; channels are dim 1
    of ``x``. ``levels`` is the number of output values, as for every unit. Forward, per threshold
    ``k`` and channel ``c`` (see the module docstring)::

        on_k = clip(ceil(direction * (x - threshold)), 0, 1)      direction in {-1, +1}
        h    = (a * sum_k on_k + b) / d                             the kind's code_map (a, b, d)

    (sign: ``2 on - 1``; step: ``on``; qrelu: ``sum_k on_k / n``.)

    :func:`fold_thresholds` builds them from BatchNorm statistics; by hand, a step unit that is on
    where ``x > 0.5`` in channel 0 and where ``x < -1`` in channel 1:

    >>> unit = FoldedThreshold("step", torch.tensor([[0.5, -1.0]]), torch.tensor([[1.0, -1.0]]), (1, 0, 1))
    >>> unit
    FoldedThreshold(activation='step', channels=2, thresholds per channel=1)
    >>> unit(torch.tensor([[0.7, 0.0], [0.5, -2.0]]))  # a tie (x == threshold) is off
    tensor([[1., 0.],
            [0., 1.]])
    """

    def __init__(self, activation: str, threshold: Tensor, direction: Tensor, code_map: Tuple[int, int, int]):
        super().__init__()
        self.activation = activation
        #: The number of thresholds per channel (``threshold.shape[0]``; 1 for sign and step).
        self.thresholds = int(threshold.shape[0])
        self.code_map: Tuple[int, int, int] = tuple(int(v) for v in code_map)
        if len(self.code_map) != 3 or self.code_map[0] == 0 or self.code_map[2] < 1:
            raise ValueError(f"code_map must be (a, b, d) with a != 0 and d >= 1, got {code_map!r}")
        self.levels = self.thresholds + 1
        self.register_buffer("threshold", threshold.to(torch.float32))
        self.register_buffer("direction", direction.to(torch.float32))
        self.flip = bool((direction < 0).any())  # a plain bool: traced away by fx, torch.export and jit

    def extra_repr(self) -> str:
        thresholds, channels = self.threshold.shape
        return f"activation={self.activation!r}, channels={channels}, thresholds per channel={thresholds}"

    def forward(self, x: Tensor) -> Tensor:
        thresholds = self.threshold.shape[0]
        trailing = [1] * (x.dim() - 2)
        if thresholds == 1:
            shape = [1, -1] + trailing
            d = x - self.threshold.view(shape)
            if self.flip:
                d = d * self.direction.view(shape)
            codes = torch.clamp(d, 0, 1).ceil()
        else:
            shape = [1, thresholds, -1] + trailing
            xs = x.unsqueeze(1)
            d = xs - self.threshold.view(shape)
            if self.flip:
                d = d * self.direction.view(shape)
            codes = torch.clamp(d, 0, 1).ceil().sum(1)
        a, b, d_ = self.code_map
        return decode_codes(codes, a, b, d_)


def _round_towards(t64: Tensor, down: Tensor) -> Tensor:
    """float32 ``t`` with ``x > t <=> x > t64`` (``down``) or ``x < t <=> x < t64`` for every float32 ``x``."""
    t32 = t64.to(torch.float32)
    back = t32.to(torch.float64)
    t32 = torch.where(down & (back > t64), torch.nextafter(t32, torch.full_like(t32, -float("inf"))), t32)
    t32 = torch.where(~down & (back < t64), torch.nextafter(t32, torch.full_like(t32, float("inf"))), t32)
    return t32


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> Tuple[Tensor, Tensor]:
    """``(a, b)`` in float64 with ``BN(x) = a x + b`` per channel (eval mode)."""
    mean = bn.running_mean.detach().to(torch.float64)
    var = bn.running_var.detach().to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(mean)
    a = gamma / torch.sqrt(var + bn.eps)
    return a, beta - a * mean


def folded_unit(bn: nn.modules.batchnorm._BatchNorm, unit: FrozenUnit) -> FoldedThreshold:
    """The :class:`FoldedThreshold` equal to ``unit(bn(x))`` for ``bn`` in eval mode.

    >>> bn = nn.BatchNorm1d(2).eval()
    >>> from lightning_ftprop.export.frozen import FrozenQReLU
    >>> folded_unit(bn, FrozenQReLU(thresholds=3)).threshold.shape  # (thresholds, channels)
    torch.Size([3, 2])
    """
    a, b = _bn_affine(bn)
    thetas = torch.tensor(thresholds_of(unit), dtype=torch.float64)[:, None]  # (thresholds, 1)
    s = torch.where(a < 0, -1.0, 1.0).to(torch.float64).expand(len(thetas), -1)
    safe_a = torch.where(a == 0, torch.ones_like(a), a)
    t64 = torch.where(a == 0, torch.where(b > thetas, -torch.inf, torch.inf).to(torch.float64), (thetas - b) / safe_a)
    threshold = _round_towards(t64, s > 0)
    return FoldedThreshold(unit.activation, threshold, s, unit.code_map)


_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (FrozenUnit, FoldedThreshold)) or super().is_leaf_module(m, qualname)


def _single_module_node(node, gm, types) -> Optional[nn.Module]:
    if node.op != "call_module" or len(node.users) != 1:
        return None
    module = gm.get_submodule(node.target)
    return module if isinstance(module, types) else None


def fold_thresholds(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in which every ``conv/linear -> BN -> unit`` chain is folded.

    The result is a ``torch.fx.GraphModule`` in eval mode: each folded ``BatchNorm -> unit`` pair is
    one :class:`FoldedThreshold` (the BatchNorm is gone); everything else is as in :func:`freeze`.
    A unit may be shared (torchvision's ``BasicBlock.relu``): only the call that follows a BatchNorm
    is folded. See the module docstring for the formulas, the rounding behaviour and the edge cases.

    Raises:
        ValueError: ``model`` cannot be traced with ``torch.fx`` (data-dependent control flow);
            use :func:`freeze` instead, or ``export_onnx(..., fold=False)``.

    >>> from lightning_ftprop.nn import Sign
    >>> model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), Sign()).eval()
    >>> folded = fold_thresholds(model)
    >>> [type(m).__name__ for m in folded.children()]
    ['Linear', 'FoldedThreshold']
    >>> x = torch.randn(4, 3)
    >>> torch.equal(folded(x), model(x))
    True
    """
    frozen = freeze(model)
    try:
        graph = _Tracer().trace(frozen)
    except Exception as err:  # fx raises many types for untraceable code
        raise ValueError(
            f"fold_thresholds() cannot trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}); "
            "use freeze(model) or export_onnx(..., fold=False) instead"
        ) from err
    gm = torch.fx.GraphModule(frozen, graph, class_name=f"Folded{type(model).__name__}")
    module_calls: Dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module_calls[node.target] = module_calls.get(node.target, 0) + 1
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), FrozenUnit):
            continue
        unit = gm.get_submodule(node.target)
        pools, source = [], node.args[0]
        while isinstance(source, torch.fx.Node) and _single_module_node(source, gm, _POOLS) is not None:
            pools.append(source)
            source = source.args[0]
        bn = (
            _single_module_node(source, gm, nn.modules.batchnorm._BatchNorm)
            if isinstance(source, torch.fx.Node)
            else None
        )
        if bn is None or bn.running_mean is None or module_calls[source.target] != 1:
            continue
        bn = copy.deepcopy(bn)
        negative = _bn_affine(bn)[0] < 0
        if negative.any():
            producer_node = source.args[0]
            producer = None
            if isinstance(producer_node, torch.fx.Node) and module_calls.get(producer_node.target) == 1:
                producer = _single_module_node(producer_node, gm, _PRODUCERS)
            if producer is not None:
                with torch.no_grad():  # negate those output channels (exact), and BN's mean and gamma with them
                    producer.weight[negative] *= -1
                    if producer.bias is not None:
                        producer.bias[negative] *= -1
                    bn.running_mean[negative] *= -1
                    bn.weight[negative] *= -1
            elif pools:
                continue  # max does not commute with a decreasing map: leave the chain unfolded
        name = f"folded_{count}"
        count += 1
        gm.add_submodule(name, folded_unit(bn, unit))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        # the BN node is now only an input of the pools (or of nothing): bypass it
        source.replace_all_uses_with(source.args[0])
        gm.graph.erase_node(source)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm.eval()
