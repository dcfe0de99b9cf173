"""Persistent buffers that take a step's inputs to the device in one copy.

A step's arrays (int64 token ids, int32 block tables, float32 sampling parameters, ...) are packed
one after another into a flat host buffer, each at a 16-byte boundary (a dtype view needs its
element's alignment, and Triton compiles its kernels for 16-byte aligned pointers). The used prefix
then goes to a device buffer of the same layout in one non-blocking copy, and each array's device
tensor is a view of that buffer at the same offset: valid, in stream order, after the copy; and at
a fixed address for a given layout, which is what a CUDA graph captured on such views reads.

Reuse. On CUDA the host buffers are pinned and the copy returns before it has run, so a host
buffer must not be refilled while its copy may still be queued. Two host buffers alternate, each
with an event recorded after its copy; refilling one first waits on its event. That copy is the
step before last's, and if either of the two steps since sampled, the host has already waited for
that step's tokens, which the device makes after the copy: the wait costs nothing. Only after two
steps that sampled nothing (prefill chunks) does it wait, until the device reaches the step before
last's copy. (One buffer and one event would make the host wait for the previous step's copy, which
sits behind the work queued before it.) The device buffer is single: a step's copy into it is
queued on the stream after the previous step's kernels, which have therefore read their inputs.

When the event is recorded. Recording it is a CUDA call, which on some hosts costs as long as the
copy itself (0.1 ms or more on a virtualised GPU machine), and a lone prompt's graph waits for it.
So `send(record=False)` leaves it to `record()`, which the runner calls once the whole step is
queued, off that wait; an event later in the stream than the copy is as safe to wait on. A turn
whose record never came (a step that raised in between) is recorded when begin() next takes it.

Page-locked memory. The host buffers are registered with cudaHostRegister, not taken from torch's
pinned-memory pool: that pool remembers every stream a block was copied on and, when the block is
freed, records an event there, which after a device-side assert throws inside a destructor and
aborts the process (the engine must instead stop with DeviceFailure and exit cleanly). Nor are they
ever unregistered: that is a CUDA call too, which a garbage collection could make in the middle of
a CUDA graph's capture (breaking it) or after such an assert. A Staging that goes hands its buffers,
each with the event of its last copy, to a free list that the next one of that size takes from (the
engine makes one; tests make many small ones); waiting on the event keeps that reuse safe too.

On a CPU nothing is pinned and the copy is a plain memcpy; the code path is the same.
"""
from __future__ import annotations

import functools
import math
import mmap
import weakref
from typing import Callable

import numpy as np
import torch

Stage = Callable[[np.ndarray], torch.Tensor]  # a filled host array -> its device tensor, after the step's copy
ALIGN = 16  # bytes: every array starts at a multiple
_TORCH_DTYPES = {np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32,
                 np.dtype(np.float32): torch.float32}


class NoRoom(Exception):
    """A step's arrays do not fit the buffers (the caller may build it in larger, one-off ones)."""


class Staging:
    """`capacity` bytes of host buffers (two, alternating) and one device buffer, packed per step:
    begin(), then take() or stage() for each array, then send()."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.capacity = _round_up(max(capacity, ALIGN), ALIGN)
        self.device = device
        cuda = device.type == "cuda"
        if cuda:
            pairs = lend_page_locked(self, self.capacity, device, 2)
        else:
            pairs = [(torch.empty(self.capacity, dtype=torch.uint8), None) for _ in range(2)]
        self._hosts = [host for host, _ in pairs]
        self._events: list[torch.cuda.Event | None] = [event for _, event in pairs]  # recorded after each copy
        self._unrecorded = [False, False]  # a turn whose copy was sent but whose event is not recorded yet
        self._host_arrays = [h.numpy() for h in self._hosts]
        self._device = torch.empty(self.capacity, dtype=torch.uint8, device=device)
        self._turn = 0
        self._used = 0
        self._layout: list[tuple[int, tuple[int, ...], torch.dtype]] = []  # this step's arrays so far
        # an array's views (a torch view costs ~3 us, a numpy one ~1), cached per (turn, offset, shape,
        # dtype), over the buffers alone (no cycle to self)
        self._views = functools.lru_cache(maxsize=8192)(
            functools.partial(_views, self._host_arrays, self._device, self.capacity))
        # the copy's (destination, source) prefixes by (turn, bytes): slicing two tensors costs more
        # than the copy's own call (60 against 14 us on a lent GPU machine's host)
        self._prefixes = functools.lru_cache(maxsize=1024)(functools.partial(_prefixes, self._hosts, self._device))

    def begin(self) -> None:
        """Start a step in the other host buffer, once its last copy has run."""
        self._turn ^= 1
        if self._unrecorded[self._turn]:  # recorded now, after its copy: waiting on it is safe, if later
            self.record(self._turn)
        event = self._events[self._turn]
        if event is not None:
            event.synchronize()  # returns at once for an event never recorded
        self._used = 0
        self._layout = []

    def take(self, shape: tuple[int, ...], dtype: np.dtype | type) -> tuple[np.ndarray, torch.Tensor]:
        """Room for one array: its host view, to fill now, and its device view, valid after send()."""
        host, device, self._used, region = self._views(self._turn, self._used, shape, dtype)  # NoRoom if past the end
        self._layout.append(region)
        return host, device

    def stage(self, array: np.ndarray) -> torch.Tensor:
        """A filled host array into this step's copy; returns its device view (valid after send())."""
        host, device = self.take(array.shape, array.dtype)
        host[...] = array
        return device

    def send(self, record: bool = True) -> None:
        """The step's one copy: the used prefix of the host buffer to the device, without blocking.
        record=False: its event is recorded by the next record() (see the module docstring)."""
        device, host = self._prefixes(self._turn, self._used)
        device.copy_(host, non_blocking=True)
        self._unrecorded[self._turn] = True
        if record:
            self.record()

    def record(self, turn: int | None = None) -> None:
        """Record the event of the last copy from this turn's host buffer (or `turn`'s), if not yet."""
        turn = self._turn if turn is None else turn
        if not self._unrecorded[turn]:
            return
        self._unrecorded[turn] = False
        event = self._events[turn]
        if event is not None:
            event.record()

    def regions(self) -> tuple[tuple[int, tuple[int, ...], torch.dtype], ...]:
        """(offset, shape, dtype) of each array taken since begin(), in order."""
        return tuple(self._layout)

    @property
    def device_buffer(self) -> torch.Tensor:
        """The device buffer every device view of a step is a view of (tests check its reuse)."""
        return self._device



def _prefixes(hosts: list[torch.Tensor], device: torch.Tensor, turn: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return device[:n], hosts[turn][:n]


def _views(hosts: list[np.ndarray], device: torch.Tensor, capacity: int, turn: int, start: int,
           shape: tuple[int, ...], dtype: np.dtype | type
           ) -> tuple[np.ndarray, torch.Tensor, int, tuple[int, tuple[int, ...], torch.dtype]]:
    """An array at `start` in turn's host buffer and in the device buffer: (host view, device view,
    where the next array starts, its region); NoRoom past the buffers' end."""
    dtype = np.dtype(dtype)
    end = start + math.prod(shape) * dtype.itemsize
    if end > capacity:
        raise NoRoom(f"{end} bytes of step inputs; the buffers hold {capacity}")
    torch_dtype = _TORCH_DTYPES[dtype]
    host = hosts[turn][start:end].view(dtype).reshape(shape)
    return host, device[start:end].view(torch_dtype).view(shape), _round_up(end, ALIGN), (start, shape, torch_dtype)


# page-locked buffers of gone Stagings, with the events of their last copies, by (device, size)
_FREE_PAGE_LOCKED: dict[tuple[int, int], list[tuple[torch.Tensor, torch.cuda.Event]]] = {}


def _pool_key(capacity: int, device: torch.device) -> tuple[int, int]:
    """(device index, size): sizes are powers of two of at least a page, so that buffers get reused."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, max(mmap.PAGESIZE, 1 << (capacity - 1).bit_length()))
    _FREE_PAGE_LOCKED.setdefault(key, [])
    return key


def lend_page_locked(owner: object, capacity: int, device: torch.device,
                     count: int) -> list[tuple[torch.Tensor, torch.cuda.Event]]:
    """`count` page-locked host buffers of at least `capacity` bytes, each with the event of its last
    copy, back to the pool when `owner` goes (see the module's docstring: never unregistered)."""
    pairs = [_take_page_locked(capacity, device) for _ in range(count)]
    weakref.finalize(owner, _FREE_PAGE_LOCKED[_pool_key(capacity, device)].extend, pairs)
    return pairs


def _take_page_locked(capacity: int, device: torch.device) -> tuple[torch.Tensor, torch.cuda.Event]:
    """A page-locked host buffer of at least `capacity` bytes and the event of its last copy: a gone
    Staging's, or new (page-aligned memory registered with CUDA for the process's life)."""
    key = _pool_key(capacity, device)
    if _FREE_PAGE_LOCKED[key]:
        return _FREE_PAGE_LOCKED[key].pop()
    size = key[1]
    raw = torch.empty(size + mmap.PAGESIZE, dtype=torch.uint8)
    start = -raw.data_ptr() % mmap.PAGESIZE
    buffer = raw[start:start + size]  # holds raw's storage
    torch.cuda.check_error(torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), size, 0))
    return buffer, torch.cuda.Event()


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to
