"""DP-attention lockstep: every DP group serves its own requests, but the MoE layers' collectives span the
groups, so all ranks must run the same number of forward passes. `Lockstep` wraps the model: before each
forward the ranks vote (one all-reduce of a flag) and a rank with nothing to do runs a one-token dummy
forward on a scratch cache while any other rank is busy.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from dsa.model.cache import Batch, PagedCache
from dsa.model.parallel_groups import ParallelGroups


class DummyForward:
    """A one-token forward on a one-block scratch cache: what a rank with nothing to compute runs so that the
    collectives inside the model (MoE, TP) stay matched with the busy ranks'. Call it like a function."""

    def __init__(self, model: torch.nn.Module, page_size: int):
        self.model, self.page_size = model, page_size
        self._scratch = None

    @torch.inference_mode()
    def __call__(self) -> None:
        m = self.model
        device = next(m.parameters()).device
        if self._scratch is None:
            self._scratch = PagedCache(m.config, num_blocks=1, page_size=self.page_size,
                                       kv_cache_dtype=m.kv_cache_dtype, dtype=m.dtype, indexer_fp8=m.indexer_fp8,
                                       device=device)
        batch = Batch.build(new_lens=[1], context_lens=[0], block_tables=[[0]], page_size=self.page_size, device=device)
        m(torch.zeros(1, dtype=torch.long, device=device), batch, self._scratch, last_only=True)


class Lockstep:
    """Calls the model like the model, after a vote that keeps every rank's forward passes in step.

    `drain()` runs dummy one-token forwards until no rank is busy; call it when this rank's work is
    done (a rank with no request calls it right away)."""

    def __init__(self, model: torch.nn.Module, groups: ParallelGroups, page_size: int):
        self.model, self.groups, self.page_size = model, groups, page_size
        self._idle_step = DummyForward(model, page_size)

    def __call__(self, *args, **kwargs):
        self._vote(True)
        return self.model(*args, **kwargs)

    def _vote(self, busy: bool) -> bool:
        device = next(self.model.parameters()).device  # nccl / hccl reduce device tensors
        flag = torch.tensor([int(busy)], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.groups.world_group)
        return bool(flag.item())

    @torch.inference_mode()
    def drain(self) -> int:
        """Dummy forwards while any rank is busy; returns how many ran."""
        steps = 0
        while self._vote(False):
            self._idle_step()
            steps += 1
        return steps


__all__ = ["Lockstep", "DummyForward"]
