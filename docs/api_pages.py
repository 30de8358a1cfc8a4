"""The API reference pages, one per public module of ``lightning_ftprop``, written at build time.

Every module found by walking the package is a page unless a part of its dotted name starts with
``_``. A page documents the module's public names (its ``__all__``, else the names without a leading
underscore) that the module defines; a name it re-exports from another public module is listed in a
table that links to the defining module's entry, so each object is described once.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import pkgutil
import typing
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Tuple

PACKAGE = "lightning_ftprop"

#: Cross-reference targets outside this package: the offline build (no intersphinx) cannot resolve
#: them, so the strict build ignores them. Every other unresolved target is an error.
_EXTERNAL_ROOTS = (
    "torch|nn|lightning|pl|L|torchvision|torchmetrics|numpy|np|onnx|onnxruntime|onnxscript|scipy|wandb|"
    "jsonargparse|transformers|timm|matplotlib|PIL|argparse|collections|os|io|pathlib|re|dataclasses|enum|"
    "typing|types|abc|contextlib|functools|logging|warnings|fractions|Tensor|Module|Path|TextIO|Callable"
)
_BUILTINS = "|".join(sorted(name for name in dir(builtins) if not name.startswith("_")))
_TYPING = "|".join(sorted(name for name in dir(typing) if not name.startswith("_")))
#: ...and private names (a leading underscore somewhere), which have no entry to link to, and quoted
#: annotations that the description of a signature splits apart.
EXTERNAL_TARGET = (
    rf"(({_EXTERNAL_ROOTS})(\..+)?|{_BUILTINS}|{_TYPING}|None|True|False|Ellipsis|optional|'.*|(.*\.)?_.*)"
)


def public_modules() -> List[str]:
    """The dotted names of the package's public modules, the package first, sorted."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE] + [info.name for info in pkgutil.walk_packages(package.__path__, PACKAGE + ".")]
    return sorted(n for n in names if not any(part.startswith("_") for part in n.split(".")))


def public_names(module: ModuleType) -> List[str]:
    """The module's ``__all__``, else its names without a leading underscore that are not modules."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_") and not inspect.ismodule(v)]
    return list(names)


def home(obj: object) -> str:
    """The public module that defines ``obj`` (a class or function), or ``""``."""
    name = getattr(obj, "__module__", None) if (inspect.isclass(obj) or inspect.isroutine(obj)) else None
    if not name or any(part.startswith("_") for part in name.split(".")) or not name.startswith(PACKAGE):
        return ""
    return name


def split_members(module: ModuleType) -> Tuple[List[str], List[str]]:
    """(names documented on this module's page, dotted targets of the names it re-exports)."""
    own, reexported = [], []
    is_package = hasattr(module, "__path__")
    for name in public_names(module):
        obj = getattr(module, name)
        if inspect.ismodule(obj):
            continue
        where = home(obj)
        if where and where != module.__name__:
            reexported.append(f"{where}.{obj.__qualname__}")
        elif where or not is_package:
            own.append(name)
        else:  # a constant in a package: documented where a submodule lists it, else here
            source = next(
                (m for m in public_modules() if m.startswith(module.__name__ + ".") and _lists(m, name, obj)), ""
            )
            (reexported.append(f"{source}.{name}") if source else own.append(name))
    return own, reexported


def documented_targets() -> Dict[str, str]:
    """Every ``module.name`` of a public name -> the dotted name of the entry that documents it."""
    targets: Dict[str, str] = {}
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        own, reexported = split_members(module)
        for name in own:
            targets[f"{module_name}.{name}"] = f"{module_name}.{name}"
        for target in reexported:
            targets[f"{module_name}.{target.rsplit('.', 1)[-1]}"] = target
    for alias, target in list(targets.items()):  # methods: Class.method under the re-exported class too
        targets.setdefault(alias, target)
    return targets


def documented_target(reference: str, current_module: str = "") -> Optional[str]:
    """The documented entry a cross-reference means, or None.

    ``reference`` is resolved as written (``lightning_ftprop.FTPropCallback``), inside
    ``current_module``, and last as a name that only one public module holds.
    """
    targets = _targets()
    for candidate in (reference, f"{current_module}.{reference}", f"{PACKAGE}.{reference}"):
        if candidate in targets:
            return targets[candidate]
        owner, _, member = candidate.rpartition(".")  # Class.method: resolve the class, keep the method
        if owner in targets and member and inspect.isclass(_load(targets[owner])):
            return f"{targets[owner]}.{member}"
    unique = {t for alias, t in targets.items() if alias.rsplit(".", 1)[-1] == reference}
    return unique.pop() if len(unique) == 1 else None


def _load(dotted: str) -> object:
    """The object at a documented ``module.name`` target."""
    module_name, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), name, None)


_CACHE: Dict[str, Dict[str, str]] = {}


def _targets() -> Dict[str, str]:
    if "targets" not in _CACHE:
        _CACHE["targets"] = documented_targets()
    return _CACHE["targets"]


def public_objects() -> List[Tuple[str, str, object]]:
    """``(module, name, object)`` for every public class and function, on the page that documents it."""
    found = []
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        for name in split_members(module)[0]:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isroutine(obj):
                found.append((module_name, name, obj))
    return found


def missing_docstrings() -> List[str]:
    """The public modules, classes and functions without a docstring (the strict build fails on each)."""
    missing = [name for name in public_modules() if not (importlib.import_module(name).__doc__ or "").strip()]
    missing += [f"{module}.{name}" for module, name, obj in public_objects() if not (obj.__doc__ or "").strip()]
    return missing


def _lists(module_name: str, name: str, obj: object) -> bool:
    module = importlib.import_module(module_name)
    return name in (getattr(module, "__all__", None) or ()) and getattr(module, name, None) is obj


def module_page(name: str) -> str:
    """The reST of one module's page."""
    module = importlib.import_module(name)
    own, reexported = split_members(module)
    lines = [name, "=" * len(name), "", f".. automodule:: {name}"]
    lines.append(f"   :members: {', '.join(own)}" if own else "   :no-members:")
    if reexported:
        lines += ["", ".. rubric:: Also importable from here", ""]
        lines += [f"* :py:obj:`~{target}`" for target in reexported]
    return "\n".join(lines) + "\n"


def write_pages(folder: Path) -> List[Path]:
    """Write ``index.rst`` and one page per public module into ``folder``; return the module pages."""
    folder.mkdir(parents=True, exist_ok=True)
    pages = []
    for name in public_modules():
        page = folder / f"{name}.rst"
        text = module_page(name)
        if not page.exists() or page.read_text() != text:  # unchanged pages keep their time: no rebuild
            page.write_text(text)
        pages.append(page)
    index = "API reference\n=============\n\n.. toctree::\n   :maxdepth: 1\n\n"
    index += "".join(f"   {page.stem}\n" for page in pages)
    if not (folder / "index.rst").exists() or (folder / "index.rst").read_text() != index:
        (folder / "index.rst").write_text(index)
    return pages
