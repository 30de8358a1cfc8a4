"""Deploy a trained threshold network: freeze it, fold BatchNorm into thresholds, write ONNX.

    frozen = freeze(model)                  # forward-only copy: no autograd.Function, no rule
    folded = fold_thresholds(model)         # conv/linear -> BN -> unit becomes conv/linear -> threshold compare
    export_onnx(model, "model.onnx", torch.randn(1, 3, 32, 32))   # standard ONNX operators only, checked

**Frozen units.** :func:`freeze` replaces every :class:`~lightning_ftprop.nn.ThresholdUnit` by a plain
module that computes the very same forward as :mod:`lightning_ftprop.functional` (the same code):

    FrozenSign:   h = +1 if z > 0 else -1             (sign(0) = -1)
    FrozenStep:   h =  1 if z > 0 else 0              (step(0) = 0)
    FrozenQReLU:  h = clip(ceil((n - 1) z), 0, n) / n          n = thresholds
    NaN in gives NaN out. There is no backward (inference only).

**Folding.** In eval mode BatchNorm is the per-channel affine map ``z = a x + b`` with
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

**ONNX.** :func:`export_onnx` uses ``torch.onnx.export(..., dynamo=True)`` (the default and
recommended exporter of torch 2.14; it needs ``onnxscript``), with a dynamic batch dimension. A
folded unit becomes ``Sub, Clip, Ceil`` (sign adds ``Mul, Sub``; qrelu adds ``ReduceSum, Div``), a
frozen unfolded one ``Clip, Ceil`` or ``Mul, Ceil, Clip, Div``: all in the standard domain.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from lightning_ftprop.functional import qrelu_values, sign_values, step_values
from lightning_ftprop.nn import QReLU, Sign, Step, ThresholdUnit

__all__ = [
    "FrozenSign",
    "FrozenStep",
    "FrozenQReLU",
    "FoldedThreshold",
    "freeze",
    "fold_thresholds",
    "export_onnx",
    "check_onnx_domains",
    "MIN_OPSET",
]

#: The lowest ONNX opset :func:`export_onnx` accepts.
MIN_OPSET = 17

# --- frozen units -----------------------------------------------------------------------------------


class FrozenUnit(nn.Module):
    """Base of the forward-only units; ``activation`` and ``levels`` as in :mod:`lightning_ftprop.nn`."""

    activation = ""  # no annotations here: torch.jit.script would read them as strings
    levels = 2


class FrozenSign(FrozenUnit):
    """``h = +1 if z > 0 else -1``; forward only.

    >>> FrozenSign()(torch.tensor([-1.0, 0.0, 0.5]))
    tensor([-1., -1.,  1.])
    """

    activation = "sign"

    def forward(self, z: Tensor) -> Tensor:
        return sign_values(z)


class FrozenStep(FrozenUnit):
    """``h = 1 if z > 0 else 0``; forward only.

    >>> FrozenStep()(torch.tensor([-1.0, 0.0, 0.5]))
    tensor([0., 0., 1.])
    """

    activation = "step"

    def forward(self, z: Tensor) -> Tensor:
        return step_values(z)


class FrozenQReLU(FrozenUnit):
    """``h = clip(ceil((n - 1) z), 0, n) / n`` with ``n = thresholds``; forward only.

    >>> FrozenQReLU(thresholds=3)(torch.tensor([-1.0, 0.2, 0.6, 2.0]))
    tensor([0.0000, 0.3333, 0.6667, 1.0000])
    """

    activation = "qrelu"

    def __init__(self, thresholds: int = 3):
        super().__init__()
        self.thresholds = int(thresholds)
        self.levels = self.thresholds + 1

    def extra_repr(self) -> str:
        return f"thresholds={self.thresholds}"

    def forward(self, z: Tensor) -> Tensor:
        return qrelu_values(z, self.thresholds)


def _frozen(unit: ThresholdUnit) -> FrozenUnit:
    if isinstance(unit, QReLU):
        return FrozenQReLU(unit.thresholds)
    if isinstance(unit, Sign):
        return FrozenSign()
    if isinstance(unit, Step):
        return FrozenStep()
    raise TypeError(f"cannot freeze {type(unit).__name__}; freeze() knows Sign, Step and QReLU")


def _has_units(model: nn.Module) -> bool:
    return any(isinstance(m, (ThresholdUnit, FrozenUnit)) for m in model.modules())


def freeze(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` (eval mode, no gradients) with every threshold unit frozen.

    The copy works with ``torch.export.export`` and ``torch.jit.script`` (where the model itself does)
    and gives outputs identical to ``model.eval()``. A unit shared by several parents stays shared.
    The original model is not changed.

    >>> from lightning_ftprop.nn import Sign
    >>> freeze(nn.Sequential(nn.Linear(2, 2), Sign()))[1]
    FrozenSign()
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"freeze() expects an nn.Module, got {type(model).__name__}")
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    replacement: Dict[int, FrozenUnit] = {}
    for _, parent in list(frozen.named_modules(remove_duplicate=False)):
        for name, child in list(parent._modules.items()):
            if isinstance(child, ThresholdUnit):
                if id(child) not in replacement:
                    replacement[id(child)] = _frozen(child)
                setattr(parent, name, replacement[id(child)])
    return frozen


# --- folding ----------------------------------------------------------------------------------------


def _thresholds(unit: FrozenUnit) -> List[float]:
    """The threshold positions ``theta_k`` of a unit: ``[0.0]`` for sign and step, ``k / (n - 1)`` for qrelu."""
    if isinstance(unit, FrozenQReLU):
        return [k / (unit.thresholds - 1) for k in range(unit.thresholds)]
    return [0.0]


class FoldedThreshold(nn.Module):
    """``BatchNorm -> unit`` as per-channel threshold compares on the BatchNorm's input ``x``.

    Buffers ``threshold`` and ``direction`` have shape ``(thresholds, channels)``; channels are dim 1
    of ``x``. ``levels`` is the number of output values, as for every unit. Forward, per threshold
    ``k`` and channel ``c`` (see the module docstring)::

        on_k = clip(ceil(direction * (x - threshold)), 0, 1)      direction in {-1, +1}
        sign: 2 * on_0 - 1      step: on_0      qrelu: (1/n) * sum_k on_k

    :func:`fold_thresholds` builds them from BatchNorm statistics; by hand, a step unit that is on
    where ``x > 0.5`` in channel 0 and where ``x < -1`` in channel 1:

    >>> unit = FoldedThreshold("step", torch.tensor([[0.5, -1.0]]), torch.tensor([[1.0, -1.0]]))
    >>> unit
    FoldedThreshold(activation='step', channels=2, thresholds per channel=1)
    >>> unit(torch.tensor([[0.7, 0.0], [0.5, -2.0]]))  # a tie (x == threshold) is off
    tensor([[1., 0.],
            [0., 1.]])
    """

    def __init__(self, activation: str, threshold: Tensor, direction: Tensor):
        super().__init__()
        if activation not in ("sign", "step", "qrelu"):
            raise ValueError(f"unknown activation {activation!r}; valid: sign, step, qrelu")
        self.activation = activation
        #: The number of thresholds per channel (``threshold.shape[0]``; 1 for sign and step).
        self.thresholds = int(threshold.shape[0])
        if activation != "qrelu" and self.thresholds != 1:
            raise ValueError(
                f"{activation} has one threshold per channel; got threshold of shape {tuple(threshold.shape)}"
            )
        self.sign_output = activation == "sign"
        self.levels = self.thresholds + 1 if activation == "qrelu" else 2
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
            on = torch.clamp(d, 0, 1).ceil()
            return on * 2 - 1 if self.sign_output else on
        shape = [1, thresholds, -1] + trailing
        xs = x.unsqueeze(1)
        d = xs - self.threshold.view(shape)
        if self.flip:
            d = d * self.direction.view(shape)
        return torch.clamp(d, 0, 1).ceil().sum(1) / self.thresholds


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
    >>> folded_unit(bn, FrozenQReLU(thresholds=3)).threshold.shape  # (thresholds, channels)
    torch.Size([3, 2])
    """
    a, b = _bn_affine(bn)
    thetas = torch.tensor(_thresholds(unit), dtype=torch.float64)[:, None]  # (thresholds, 1)
    s = torch.where(a < 0, -1.0, 1.0).to(torch.float64).expand(len(thetas), -1)
    safe_a = torch.where(a == 0, torch.ones_like(a), a)
    t64 = torch.where(a == 0, torch.where(b > thetas, -torch.inf, torch.inf).to(torch.float64), (thetas - b) / safe_a)
    threshold = _round_towards(t64, s > 0)
    return FoldedThreshold(unit.activation, threshold, s)


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


# --- ONNX -------------------------------------------------------------------------------------------


def check_onnx_domains(model_proto: Any) -> List[str]:
    """``"op_type (domain)"`` for every node of ``model_proto`` outside the standard ONNX domain.

    >>> import onnx
    >>> node = onnx.helper.make_node("Relu", ["x"], ["y"])
    >>> graph = onnx.helper.make_graph([node], "g", [], [])
    >>> check_onnx_domains(onnx.helper.make_model(graph))
    []
    """
    bad: List[str] = []

    def visit(graph) -> None:
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                bad.append(f"{node.op_type} ({node.domain})")
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    visit(sub)

    visit(model_proto.graph)
    bad.extend(f"function {f.name} ({f.domain})" for f in model_proto.functions)
    return bad


def _example_args(example_input: Any) -> Tuple[Any, ...]:
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    if not args or not all(isinstance(a, Tensor) for a in args):
        raise TypeError(
            "example_input must be a tensor or a tuple of tensors, got "
            f"{type(example_input).__name__}" + (f" of {[type(a).__name__ for a in args]}" if args else "")
        )
    return args


def _captured_inputs(model: nn.Module, args: Tuple[Tensor, ...]) -> Dict[str, Tuple[Any, ...]]:
    """The positional inputs of every submodule's first call in one eager run of ``model(*args)``."""
    seen: Dict[str, Tuple[Any, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if name:

            def hook(mod, inputs, name=name):
                seen.setdefault(name, inputs)

            handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return seen


def _culprit(model: nn.Module, args: Tuple[Tensor, ...]) -> Optional[str]:
    """The deepest submodule that ``torch.export`` fails on by itself, or None."""
    try:
        inputs = _captured_inputs(model, args)
    except Exception:
        return None
    culprit, parent = None, ""
    while True:
        prefix = f"{parent}." if parent else ""
        found = None
        for child_name, child in model.get_submodule(parent).named_children():
            name = prefix + child_name
            child_args = inputs.get(name)
            if child_args is None or not all(isinstance(a, Tensor) for a in child_args):
                continue
            try:
                torch.export.export(child, tuple(child_args), strict=False)
            except Exception:
                found = name
                break
        if found is None:
            return culprit
        culprit, parent = found, found


def export_onnx(
    model: nn.Module,
    path: Union[str, os.PathLike],
    example_input: Any,
    fold: bool = True,
    opset_version: Optional[int] = None,
    dynamic_batch: bool = True,
) -> str:
    """Write ``model`` (its frozen, optionally folded, inference copy) to an ONNX file at ``path``.

    Args:
        model: any ``nn.Module``; threshold units are frozen (and folded with ``fold=True``) first.
        path: the ``.onnx`` file to write. It appears only once it passed ``onnx.checker``: the model
            is written to a temporary file next to it and moved into place.
        example_input: a tensor (or a tuple of tensors) of the model's input shape.
        fold: fold ``conv/linear -> BN -> unit`` chains (:func:`fold_thresholds`).
        opset_version: the ONNX opset, >= 17; None takes the exporter's default.
        dynamic_batch: make dim 0 of every input dynamic.

    Returns:
        The path written, as a string.

    Raises:
        ValueError: the model cannot be exported (the message names the module that fails), or the
            graph would need operators outside the standard ONNX domain; no file is written.
        ImportError: ``onnx``/``onnxscript`` is missing (``pip install lightning-ftprop[export]``).

    >>> import os, tempfile
    >>> from lightning_ftprop.nn import Step
    >>> model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), Step())
    >>> with tempfile.TemporaryDirectory() as folder:  # doctest: +ELLIPSIS
    ...     path = export_onnx(model, os.path.join(folder, "model.onnx"), torch.zeros(1, 3))
    ...     os.path.basename(path), os.path.getsize(path) > 0
    ('model.onnx', True)
    """
    try:
        import onnx
    except ImportError as err:
        raise ImportError("export_onnx needs onnx and onnxscript: pip install 'lightning-ftprop[export]'") from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx() expects an nn.Module, got {type(model).__name__}")
    if opset_version is not None and (not isinstance(opset_version, int) or opset_version < MIN_OPSET):
        raise ValueError(f"opset_version must be an int >= {MIN_OPSET}, got {opset_version!r}")
    args = _example_args(example_input)
    path = os.fspath(path)
    if not _has_units(model):
        warnings.warn(
            f"{type(model).__name__} has no threshold units; exporting it as it is", UserWarning, stacklevel=2
        )
    inference = fold_thresholds(model) if fold else freeze(model)
    dynamic_shapes = tuple({0: torch.export.Dim.DYNAMIC} for _ in args) if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                inference, args, dynamo=True, opset_version=opset_version, dynamic_shapes=dynamic_shapes, verbose=False
            )
    except Exception as err:
        culprit = _culprit(freeze(model), args)
        where = f"module {culprit!r} ({type(model.get_submodule(culprit)).__name__})" if culprit else "the model"
        raise ValueError(
            f"cannot export {type(model).__name__} to ONNX: {where} fails to export "
            f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}); no file was written"
        ) from err
    proto = program.model_proto
    bad = check_onnx_domains(proto)
    if bad:
        raise ValueError(
            f"the ONNX graph of {type(model).__name__} uses operators outside the standard domain: "
            f"{', '.join(sorted(set(bad)))}; no file was written"
        )
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise ValueError(f"the exporter produced opset {opset}; export_onnx needs >= {MIN_OPSET}")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=directory)
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        onnx.checker.check_model(tmp, full_check=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
