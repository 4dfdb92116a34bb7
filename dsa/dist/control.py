"""The control plane of a multi-rank serving job: picklable Python objects from rank 0 to every rank, and
from every rank back to rank 0, over a gloo process group of its own.

    plane = ControlPlane.create()          # collective: every rank of the job calls it, in the same place
    msg = plane.broadcast(msg)             # rank 0's object on every rank (others pass anything)
    reports = plane.gather(report)         # rank 0: [every rank's object, by rank]; other ranks: None

The group is always gloo (CPU tensors), whatever the data backend (nccl / hccl move the model's tensors;
the control messages never touch a device), so control traffic never queues behind a forward on a device
stream. Its timeout is CONTROL_TIMEOUT, not the 30 minutes of a default group: between requests a
serving job's other ranks wait in `broadcast` for as long as rank 0 has nothing to send (an idle
server), and a gloo wait past its timeout is an error. A rank that dies is the launcher's business
(torchrun and `dsa run --nproc` stop the others).
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional

import torch.distributed as dist

CONTROL_TIMEOUT = timedelta(days=3650)  # an idle server waits for its next request without limit, in practice


class ControlPlane:
    """Object broadcast (from rank 0) and gather (to rank 0) over a dedicated gloo group of all ranks."""

    def __init__(self, group: Optional[dist.ProcessGroup], rank: int, world_size: int):
        self.group, self.rank, self.world_size = group, rank, world_size

    @classmethod
    def create(cls, timeout: timedelta = CONTROL_TIMEOUT) -> "ControlPlane":
        """The plane of an initialised default process group (any backend). Collective: every rank calls it
        at the same point of its program (torch.distributed.new_group)."""
        group = dist.new_group(backend="gloo", timeout=timeout)
        return cls(group, dist.get_rank(), dist.get_world_size())

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's `obj` on every rank (the others' argument is ignored)."""
        if self.world_size == 1:
            return obj
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> Optional[list]:
        """On rank 0: every rank's `obj`, index = rank. On the other ranks: None."""
        if self.world_size == 1:
            return [obj]
        out: Optional[list] = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out


__all__ = ["ControlPlane", "CONTROL_TIMEOUT"]
