"""Padded batches of whole utterances, read in worker processes that scale with cores.

A plain DataLoader hands each batch back in fresh shared memory: on a 10 MB batch, creating
and faulting in that memory costs more than reading the batch from the cache. Here each
worker reads a batch straight into one of a few shared-memory slots it keeps and reuses. The
main process receives a slot's memory once (again only when a longer batch makes it grow),
later only its number, and yields tensors that are views of the slot: no copy. A slot is given
back to its worker only when nothing in the main process refers to its memory any more (the
storage's reference count), so a batch the caller keeps is never overwritten; a worker that
finds all its slots taken reads into fresh shared memory instead, and nothing waits.
With ``pin_memory`` the batch is copied into pinned memory and the slot returned at once.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler

from rqf import ConfigError
from rqf_h5_speech.datasets import UtterancesDataset
from rqf_h5_speech.storage import H5ShardedStorage

ALIGN = 64  # bytes: each array of a batch starts on a cache line
GROWTH = 1.25  # a slot that must grow gets this much headroom for later, longer batches
_use_count = getattr(torch._C, "_storage_Use_Count", None)  # without it: copy out, return at once

Specs = dict[str, tuple[tuple[int, ...], np.dtype]]


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape)) * dtype.itemsize


def _bytes_of(storage: torch.UntypedStorage) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(storage)


@dataclass
class _Packed:
    """What a worker sends back: where each array of the batch lies in shared memory."""

    keys: list[str]
    worker: int
    slot: int  # -1: ``storage`` is this batch's own memory, not a slot
    generation: int  # which memory the slot has (changes when it grows)
    layout: dict[str, tuple[int, tuple[int, ...], np.dtype]]  # name: (offset, shape, dtype)
    storage: torch.UntypedStorage | None = None  # sent when the main process lacks it


class _SlotBoard:
    """Shared flags: which slots are taken, and which memory the main process holds for each."""

    def __init__(self, workers: int, slots: int) -> None:
        self.taken = torch.zeros((workers, slots), dtype=torch.int32).share_memory_()
        self.known = torch.zeros((workers, slots), dtype=torch.int64).share_memory_()

    def acquire(self, worker: int) -> int:
        row = self.taken[worker].numpy()
        free = np.flatnonzero(row == 0)
        if not len(free):
            return -1
        row[free[0]] = 1
        return int(free[0])

    def release(self, worker: int, slot: int) -> None:
        self.taken[worker, slot] = 0


@dataclass
class _Slot:
    generation: int
    storage: torch.UntypedStorage
    base_count: int = 0  # references the loader itself holds (main process)


class _BatchReader(torch.utils.data.Dataset):
    """Reads a whole batch per call: in the main process as arrays, in a worker into a slot."""

    def __init__(self, dataset: UtterancesDataset, board: _SlotBoard | None) -> None:
        self.dataset, self.board = dataset, board
        # this worker's own slots (never pickled: each process starts with none filled)
        self._slots: list[_Slot | None] = [None] * board.taken.shape[1] if board else []
        self._generations = itertools.count(1)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "board": self.board}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["dataset"], state["board"])  # type: ignore[misc]

    def __getitem__(self, indices: Sequence[int]) -> dict[str, Any] | _Packed:
        info = torch.utils.data.get_worker_info()
        if info is None or self.board is None:
            return self.dataset.read_batch(indices)
        packed: list[_Packed] = []

        def allocate(specs: Specs) -> dict[str, np.ndarray]:
            layout, size = {}, 0
            for name, (shape, dtype) in specs.items():
                layout[name] = (size, shape, dtype)
                size += -(-_nbytes(shape, dtype) // ALIGN) * ALIGN
            storage, slot, generation, send = self._storage_for(info.id, size)
            packed.append(_Packed([], info.id, slot, generation, layout,
                                  storage if send else None))
            raw = _bytes_of(storage).numpy()
            return {name: raw[off:off + _nbytes(shape, dt)].view(dt).reshape(shape)
                    for name, (off, shape, dt) in layout.items()}

        try:
            batch = self.dataset.read_batch(indices, allocate)
        except BaseException:
            if packed and packed[0].slot >= 0:
                self.board.release(info.id, packed[0].slot)
            raise
        packed[0].keys = batch["keys"]
        return packed[0]

    def _storage_for(self, worker: int, size: int) -> tuple[torch.UntypedStorage, int, int, bool]:
        assert self.board is not None
        slot = self.board.acquire(worker)
        if slot < 0:
            return torch.UntypedStorage._new_shared(max(size, 1)), -1, 0, True
        current = self._slots[slot]
        if current is None or current.storage.nbytes() < size:
            generation = (os.getpid() << 24) + next(self._generations)  # unique across workers
            current = _Slot(generation,
                            torch.UntypedStorage._new_shared(int(size * GROWTH) + ALIGN))
            self._slots[slot] = current
        send = int(self.board.known[worker, slot]) != current.generation
        return current.storage, slot, current.generation, send


def _as_is(batch: Any) -> Any:
    return batch


class UtteranceLoader:
    """Padded batches of utterances: ``keys``, ``lengths``, ``mask``, the feature, ``mel``.

    ``dataset`` is an ``UtterancesDataset`` (or a cache directory). Workers read batches in
    parallel and return them through reused shared memory (see the module's notes); with
    ``num_workers=0`` batches are read in this process. Features stay in their stored
    precision (float16) unless the dataset normalises them. ``sampler`` (e.g. a
    ``DistributedSampler``) replaces the built-in sequential or seeded shuffled order.
    """

    def __init__(self, dataset: UtterancesDataset | str | Path, batch_size: int = 8,
                 shuffle: bool = False, num_workers: int = 0, drop_last: bool = False,
                 seed: int = 0, pin_memory: bool = False, prefetch_factor: int = 2,
                 persistent_workers: bool = True, sampler: Sampler[int] | None = None,
                 slots_per_worker: int | None = None,
                 multiprocessing_context: str | None = None) -> None:
        if isinstance(dataset, (str, Path)):
            dataset = UtterancesDataset(H5ShardedStorage(str(dataset)).open())
        if not isinstance(dataset, UtterancesDataset):
            raise ConfigError(f"dataset: expected an UtterancesDataset or a cache directory, got "
                              f"{type(dataset).__name__}")
        if batch_size < 1 or num_workers < 0:
            raise ConfigError(f"batch_size must be positive and num_workers not negative, got "
                              f"{batch_size} and {num_workers}")
        self.dataset = dataset
        self.pin_memory = pin_memory and torch.cuda.is_available()
        if sampler is None:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) \
                if shuffle else SequentialSampler(dataset)
        self.batches = BatchSampler(sampler, batch_size, drop_last)
        self.board = _SlotBoard(num_workers, slots_per_worker or prefetch_factor + 2) \
            if num_workers else None
        self._received: dict[tuple[int, int], _Slot] = {}  # slots' memory, per worker
        self._lent: dict[tuple[int, int], _Slot] = {}  # slots whose batch was yielded
        # batches that reused a slot's memory, that brought a slot's (new) memory, and that
        # came in fresh memory because every slot of their worker was taken
        self.counts = {"reused": 0, "new_slot": 0, "fresh": 0}
        extra = {"prefetch_factor": prefetch_factor, "persistent_workers": persistent_workers,
                 "multiprocessing_context": multiprocessing_context} if num_workers else {}
        self.loader = DataLoader(_BatchReader(dataset, self.board), sampler=self.batches,
                                 batch_size=None, collate_fn=_as_is, num_workers=num_workers,
                                 **extra)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.board is not None:  # slots of an abandoned pass: nothing will read them
            lent = torch.zeros_like(self.board.taken)
            for worker, slot in self._lent:
                lent[worker, slot] = 1
            self.board.taken.copy_(lent)
        for message in self.loader:
            yield self._unpack(message)

    def _return_slots(self) -> None:
        """Give back every lent slot whose memory nothing outside the loader refers to."""
        assert self.board is not None and _use_count is not None
        for key, entry in list(self._lent.items()):
            if _use_count(entry.storage._cdata) <= entry.base_count:
                self.board.release(*key)
                del self._lent[key]

    def _unpack(self, message: dict[str, Any] | _Packed) -> dict[str, Any]:
        if isinstance(message, dict):  # read in this process
            batch: dict[str, Any] = {"keys": message.pop("keys")}
            for name, arr in message.items():
                t = torch.from_numpy(arr)
                batch[name] = t.pin_memory() if self.pin_memory else t
            return batch
        assert self.board is not None
        copy_out = self.pin_memory or _use_count is None
        if not copy_out:
            self._return_slots()
        key = (message.worker, message.slot)
        self.counts["fresh" if message.slot < 0 else
                    "reused" if message.storage is None else "new_slot"] += 1
        if message.slot < 0:
            entry = _Slot(0, message.storage)  # type: ignore[arg-type]
        else:
            if message.storage is not None:
                self._received[key] = _Slot(message.generation, message.storage)
                self.board.known[key] = message.generation
                if _use_count is not None:
                    self._received[key].base_count = _use_count(message.storage._cdata)
            entry = self._received[key]
            if entry.generation != message.generation:
                raise RuntimeError(f"utterance loader: worker {message.worker} slot "
                                   f"{message.slot} memory is out of date")
        raw = _bytes_of(entry.storage)
        batch = {"keys": message.keys}
        for name, (offset, shape, dtype) in message.layout.items():
            src = raw[offset:offset + _nbytes(shape, dtype)].view(_torch_dtype(dtype)).view(shape)
            if message.slot >= 0 and copy_out:
                batch[name] = torch.empty(shape, dtype=src.dtype, pin_memory=self.pin_memory)
                batch[name].copy_(src)
            else:
                batch[name] = src.pin_memory() if self.pin_memory else src
        del raw
        if message.slot >= 0:
            if copy_out:
                self.board.release(*key)
            else:
                self._lent[key] = entry
        return batch
