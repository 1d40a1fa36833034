"""Batch sources: what ``Trainer.fit`` draws batches from, in an order fixed by the epoch."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Mapping, Protocol

import numpy as np
import torch

from rqf.errors import RqfError
from rqf.training.runtime import DistInfo, dist_info


def batch_bounds(n: int, batch_size: int, drop_last: bool = False) -> np.ndarray:
    """Start/stop offsets of the batches of ``n`` samples: every sample in near-equal batches
    of at most ``batch_size`` (1,650 at 1,024 make two of 825), or only full batches."""
    count = n // batch_size if drop_last else math.ceil(n / batch_size)
    used = count * batch_size if drop_last else n
    return np.linspace(0, used, count + 1).round().astype(np.int64)


class TensorBatches:
    """Batches drawn from one tensor by a seeded permutation per epoch.

    An epoch covers every sample of the process's share: its batches are of nearly equal size,
    at most ``batch_size`` (1,650 samples at batch size 1,024 make two batches of 825, not one
    of 1,024 with the rest dropped). ``drop_last`` keeps only full batches instead.
    On CUDA with the tensor already on the device, indexing happens there and no host
    synchronisation is needed. A CPU tensor feeding a CUDA device is gathered into pinned
    memory and copied asynchronously one batch ahead. Under DDP each rank takes an equal,
    disjoint share of every epoch's permutation.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int = 0, shuffle: bool = True,
                 device: torch.device | None = None, drop_last: bool = False,
                 info: DistInfo | None = None) -> None:
        self.data = data
        self.device = device or data.device
        self.seed = seed
        self.shuffle = shuffle
        self.info = info or dist_info()
        self.per_rank = len(data) // self.info.world_size
        if self.per_rank == 0:
            raise RqfError(f"{len(data)} training samples cannot be shared by "
                           f"{self.info.world_size} processes")
        self.batch_size = min(batch_size, self.per_rank)
        self._bounds = batch_bounds(self.per_rank, self.batch_size, drop_last)

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def _order(self, epoch: int) -> torch.Tensor:
        n = len(self.data)
        on = self.data.device
        if not self.shuffle:
            order = torch.arange(n, device=on)
        else:
            g = torch.Generator(device=on)
            g.manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g, device=on)
        start = self.info.rank * self.per_rank
        return order[start:start + self.per_rank]

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
        order = self._order(epoch)
        bounds = [(int(self._bounds[i]), int(self._bounds[i + 1])) for i in range(skip, len(self))]
        if self.data.device == self.device:
            for a, b in bounds:
                yield self.data[order[a:b]]
            return
        pin = self.device.type == "cuda"
        pending = None
        for a, b in bounds:
            batch = self.data[order[a:b]]
            if pin:
                batch = batch.pin_memory()
            nxt = batch.to(self.device, non_blocking=pin)
            if pending is not None:
                yield pending
            pending = nxt
        if pending is not None:
            yield pending


class BatchSource(Protocol):
    """What ``Trainer.fit`` draws batches from: a fixed number of batches per epoch, and each
    epoch's batches in an order fixed by the epoch number, so ``skip`` resumes exactly."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Any]:
        """The batches of ``epoch`` after the first ``skip``, on the training device."""


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``batch`` (tensors, or mappings / lists / tuples of them) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


class LoaderBatches:
    """Batches of a map-style dataset read by a torch ``DataLoader``.

    For data that is read per sample (from a file, in worker processes) rather than held in
    one tensor. The order is a ``DistributedSampler`` permutation seeded by ``seed`` and the
    epoch, so every rank takes its own disjoint share under ``torchrun`` and a resumed run
    sees the same batches (the skipped ones are never read). ``num_workers`` worker processes
    read ahead (the storage reopens its files in each); ``collate`` makes a batch of samples
    (torch's default collation when None). Batches are near-equal in size unless
    ``drop_last``, as with ``TensorBatches``.
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int = 0, shuffle: bool = True,
                 num_workers: int = 0, collate: Callable[[list[Any]], Any] | None = None,
                 device: torch.device | None = None, drop_last: bool = False,
                 info: DistInfo | None = None) -> None:
        from torch.utils.data import DistributedSampler

        self.dataset = dataset
        self.info = info or dist_info()
        if len(dataset) < self.info.world_size:
            raise RqfError(f"{len(dataset)} training samples cannot be shared by "
                           f"{self.info.world_size} processes")
        self.sampler = DistributedSampler(dataset, num_replicas=self.info.world_size,
                                          rank=self.info.rank, shuffle=shuffle, seed=seed,
                                          drop_last=True)
        self.per_rank = self.sampler.num_samples
        self.batch_size = min(batch_size, self.per_rank)
        self.num_workers = num_workers
        self.collate = collate
        self.device = device or torch.device("cpu")
        self._bounds = batch_bounds(self.per_rank, self.batch_size, drop_last)

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def batch_indices(self, epoch: int) -> list[list[int]]:
        """The sample indices of each of this rank's batches in ``epoch``."""
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        return [order[self._bounds[i]:self._bounds[i + 1]] for i in range(len(self))]

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Any]:
        from torch.utils.data import DataLoader

        batches = self.batch_indices(epoch)[skip:]
        if not batches:
            return
        pin = self.device.type == "cuda"
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            collate_fn=self.collate, pin_memory=pin)
        for batch in loader:
            yield to_device(batch, self.device, non_blocking=pin)
