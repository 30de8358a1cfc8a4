"""FSDP2 and re-runs: a module call run again in the backward sees the parameters its forward saw.

FSDP2 (``torch.distributed.fsdp.fully_shard``, what Lightning's ``ModelParallelStrategy`` applies in
``configure_model``) keeps each parameter as a sharded ``DTensor`` outside the forward and the backward of
the module that manages it: the module's pre-forward and pre-backward hooks all-gather the full
parameters, its post-forward and post-backward hooks free them again.

:func:`~lightning_ftprop.memory.recompute` re-runs a module call in the backward through the module's own
``forward``, without its hooks, and at the first use of a tensor the call made: that is earlier than
the module's own backward, so its pre-backward hook has not run and its parameters are still shards
(``aten.addmm.default got mixed torch.Tensor and DTensor``). :class:`Owners` finds the ``fully_shard``
module that manages a re-run module's parameters and calls FSDP's public ``FSDPModule.unshard()`` on it
first: an all-gather, or nothing when they are already gathered. FSDP's own post-backward hook frees them
as usual, so the parameters are gathered only somewhat earlier than without recompute.

Every rank runs the same backward, hence the same re-runs in the same order, so the all-gathers of the
ranks match, as collectives must.
"""

from __future__ import annotations

import weakref
from typing import Dict, Optional

from torch import nn

try:  # torch.distributed is optional in torch builds (and FSDPModule public from torch 2.6)
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - a torch built without distributed support
    FSDPModule = DTensor = None

__all__ = ["Owners"]


class Owners:
    """The ``fully_shard`` modules of one model, found when a re-run first meets a sharded parameter.

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> owners = Owners(model)
    >>> owners.unshard(model[0])          # plain parameters: nothing to gather
    >>> owners._owner                     # nor to look up
    {}
    """

    def __init__(self, root: nn.Module):
        self.root = weakref.ref(root)
        self._owner: Dict[nn.Module, Optional[nn.Module]] = {}

    def __getstate__(self) -> dict:  # torch.save(model), copy.deepcopy(model): the root, held by reference
        return {"root": self.root()}

    def __setstate__(self, state: dict) -> None:
        root = state["root"]
        self.root = weakref.ref(root) if root is not None else lambda: None
        self._owner = {}

    def unshard(self, module: nn.Module) -> None:
        """All-gather ``module``'s own parameters if they are FSDP2 shards (through its managing module)."""
        if DTensor is None or not any(isinstance(p, DTensor) for p in module.parameters(recurse=False)):
            return
        if module not in self._owner:
            self._find()
        owner = self._owner.get(module)
        if owner is not None:
            owner.unshard()

    def _find(self) -> None:
        """Each module's nearest ``fully_shard`` module at or above it: the one managing its own parameters."""
        root = self.root()
        self._owner = {}
        if root is None:
            return
        stack = [(root, None)]
        while stack:
            module, owner = stack.pop()
            owner = module if isinstance(module, FSDPModule) else owner
            self._owner[module] = owner
            stack.extend((child, owner) for child in module.children())
