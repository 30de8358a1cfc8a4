"""Write a threshold network as a checked ONNX file of standard operators.

:func:`export_onnx` uses ``torch.onnx.export(..., dynamo=True)`` (the default and
recommended exporter of torch 2.14; it needs ``onnxscript``), with a dynamic batch dimension. A
folded unit becomes ``Sub, Clip, Ceil`` (sign adds ``Mul, Sub``; qrelu adds ``ReduceSum, Div``), a
frozen unfolded one ``Clip, Ceil`` or ``Mul, Ceil, Clip, Div``: all in the standard domain.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from lightning_ftprop.export.fold import fold_thresholds
from lightning_ftprop.export.frozen import freeze, has_units

__all__ = ["MIN_OPSET", "check_onnx_domains", "export_onnx"]

#: The lowest ONNX opset :func:`export_onnx` accepts.
MIN_OPSET = 17

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
    if not has_units(model):
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
