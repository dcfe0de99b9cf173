"""The way back: a ring of page-locked host buffers that take each step's sampled token ids to the
host, each with its own CUDA event.

A fresh pinned tensor a step (torch's pinned-memory pool) costs more CUDA calls than the copy: the
pool's allocation, the event it records for the copy, and a new event created at its first record
(0.14 ms in all on a lent GPU machine's host, line-profiled; a single stream's decode step there
is ~1 ms of host work). The ring's buffers are registered once (Staging's pool), and each slot's
event is recorded again at every use: one copy and one record a step.

A slot is lent to one step's tokens (`send`) until they are read (`read`) or given up (`release`:
a step whose tokens are never taken, after a fault). Every copy is on the one stream, in order, and
a slot's event is recorded after its newest copy, so a given-up slot whose copy is still queued is
safe to lend again: the next copy lands after it, and its reader waits for that copy's event. When
every slot is lent, `send` returns None and the caller brings its tokens back its own way.
"""
from __future__ import annotations

import functools

import torch

from engine.runner.staging import lend_page_locked

SLOTS = 4  # steps whose tokens may be on their way at once (overlapped scheduling holds two)


class TokenReturn:
    """`SLOTS` page-locked buffers of `capacity` int64 token ids each (CUDA only)."""

    def __init__(self, capacity: int, device: torch.device, slots: int = SLOTS) -> None:
        self.capacity = capacity
        pairs = lend_page_locked(self, capacity * 8, device, slots)
        hosts = [host[:capacity * 8].view(torch.int64) for host, _ in pairs]
        self._arrays = [host.numpy() for host in hosts]
        self._events = [event for _, event in pairs]
        self._lent = [False] * slots
        self._next = 0
        # a copy's destination, by (slot, rows): slicing a tensor costs ~30 us on such a host
        self._prefixes = functools.lru_cache(maxsize=1024)(functools.partial(_prefix, hosts))

    def send(self, tokens: torch.Tensor) -> int | None:
        """Queue the copy of `tokens` ([S] int64, on the device) into a free slot and record its
        event; the slot, or None if none is free (or the tokens do not fit)."""
        if tokens.dtype != torch.int64 or tokens.dim() != 1 or tokens.shape[0] > self.capacity:
            return None
        lent, n = self._lent, len(self._lent)
        for k in range(n):
            slot = (self._next + k) % n
            if not lent[slot]:
                break
        else:
            return None
        self._prefixes(slot, tokens.shape[0]).copy_(tokens, non_blocking=True)
        self._events[slot].record()
        lent[slot] = True  # once queued: a call that raised lends nothing
        self._next = (slot + 1) % n
        return slot

    def read(self, slot: int, rows: int) -> list[int]:
        """The `rows` token ids sent into `slot`, once their copy has run; the slot is free again."""
        self._events[slot].synchronize()
        values = self._arrays[slot][:rows].tolist()
        self._lent[slot] = False
        return values

    def release(self, slot: int) -> None:
        """Give up a slot whose tokens will not be read."""
        self._lent[slot] = False

    @property
    def num_lent(self) -> int:
        return sum(self._lent)


def _prefix(hosts: list[torch.Tensor], slot: int, rows: int) -> torch.Tensor:
    return hosts[slot][:rows]
