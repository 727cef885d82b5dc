"""Several processes (torchrun) sharing work that splits into independent items.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), each
process is a rank with its own device (``cuda:LOCAL_RANK`` on a GPU node);
items (batches of seeds, bank steps, Table-1 runs) go round-robin to the
ranks, and results come back to rank 0 in item order, so that a sharded
computation gives what one process gives. Objects travel through a gloo
group on the CPU whatever the device backend, so any plain data (tensors
included) can be gathered. Without torchrun nothing is initialised and
every function is the identity of a world of one.
"""

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    """This process's place among the ranks.

    ``joined``: the ranks are one torchrun group and exchange results; a
    share of independent jobs (``--shard i/n``) owns its items alone.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    joined: bool = True

    @property
    def active(self):
        """Whether results travel between ranks."""
        return self.joined and self.size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def owns(self, index):
        """Whether item ``index`` (0, 1, 2, ...) is this rank's: round-robin over the ranks."""
        return index % self.size == self.rank

    def items(self, n):
        """The indices of ``n`` items that this rank owns."""
        return list(range(self.rank, n, self.size))


SINGLE = World()
_group = None  # the gloo group objects travel through


def launched():
    """True when started by torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device="auto"):
    """Join the process group when launched by torchrun; returns ``(world, device)``.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``: as for one process,
            except that ``cuda`` means this rank's GPU, ``cuda:LOCAL_RANK``.
    """
    global _group
    from .runtime import choose_device

    if not launched():
        return SINGLE, choose_device(device)
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    chosen = choose_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(chosen)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    _group = torch.distributed.new_group(backend="gloo") if torch.distributed.get_backend() != "gloo" else None
    return world, chosen


def barrier(world):
    """Wait until every rank arrives (nothing for one process)."""
    if world.active:
        torch.distributed.barrier(group=_group)


def gather_items(world, mine, n):
    """Every rank's per-item results, on rank 0 in item order.

    Args:
        mine: This rank's results, one per item of ``world.items(n)``, in that order.
        n: Number of items.

    Returns:
        On rank 0 (and for one process) the list of the ``n`` results in item
        order; None on the other ranks.
    """
    if not world.active:
        return list(mine)
    parts = [None] * world.size if world.is_main else None
    torch.distributed.gather_object(list(mine), parts, dst=0, group=_group)
    if not world.is_main:
        return None
    ordered = [None] * n
    for rank, results in enumerate(parts):
        for index, result in zip(range(rank, n, world.size), results):
            ordered[index] = result
    return ordered


def broadcast(world, value):
    """Rank 0's ``value`` on every rank."""
    if not world.active:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0, group=_group)
    return box[0]


def close(world):
    if world.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def parse_shard(text):
    """``"i/n"`` -> ``World(rank=i, size=n)``: a fixed share of the items, for schedulers that start
    independent jobs (Slurm arrays) instead of one torchrun."""
    from .config import ConfigError

    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: use i/n, e.g. 0/4 for the first of four jobs") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text!r}: i must be in 0..n-1 and n >= 1")
    return World(rank=index, size=count, joined=False)
