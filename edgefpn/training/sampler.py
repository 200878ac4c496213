"""One sampler for every world size: the single-process order, each global batch split across ranks."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["GlobalBatchSampler"]


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` for one rank.

    The epoch's order is ``torch.randperm(num_items)`` from a generator seeded with ``(seed, epoch)``,
    the same order a single process uses. It is cut into global batches of ``batch_size`` (the last,
    incomplete one dropped); rank ``r`` of ``world_size`` takes the ``r``-th contiguous slice of
    ``batch_size / world_size`` items of each. Unlike ``DistributedSampler`` (which deals items
    round-robin after padding), the union of the ranks' step ``k`` is exactly the single-process
    step ``k``. The epoch travels with each index so that persistent DataLoader workers draw the
    right epoch's randomness (:class:`edgefpn.data.torch_dataset.DetectionDataset`).
    """

    def __init__(
        self, num_items: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if batch_size <= 0 or batch_size % world_size:
            raise ValueError(
                f"batch_size must be a positive multiple of world_size {world_size}, got {batch_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.num_items = num_items
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:  # steps per epoch, the same on every rank
        return self.num_items // self.batch_size

    def order(self, epoch: int) -> list[int]:
        """The single-process order of ``epoch``."""
        gen = torch.Generator().manual_seed(hash_seed(self.seed, epoch))
        return torch.randperm(self.num_items, generator=gen).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order(self.epoch)
        lo = self.rank * self.local_batch
        for step in range(len(self)):
            batch = order[step * self.batch_size : (step + 1) * self.batch_size]
            yield [(self.epoch, i) for i in batch[lo : lo + self.local_batch]]


def hash_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed from (seed, epoch), so that epoch e of seed s never equals epoch e' of seed s'."""
    import numpy as np

    return int(np.random.SeedSequence((seed, epoch)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
