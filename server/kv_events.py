"""vLLM's KV-cache events: PagedChat's own types, a decoder for every supported vLLM encoding, and
an encoder that writes the current one.

vLLM (`vllm/distributed/kv_events.py`, `--kv-events-config`) publishes msgspec-msgpack batches of
BlockStored, BlockRemoved and AllBlocksCleared. The encoding changed over time; what we read:

  first form    tagged arrays (vllm#16750, in the v0.9 releases): batch [ts, events], event
                ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id],
                ["BlockRemoved", block_hashes], ["AllBlocksCleared"]; hashes are Python's hash():
                signed 64-bit ints
  to v0.25      still arrays, fields appended: the batch's data_parallel_rank (vllm#18925), `medium`
                after lora_id and after BlockRemoved's hashes (vllm#19737); from v0.10.2 hashes are
                sha256 bytes inside vLLM, published as unsigned 64-bit ints by default, or as bytes
                (vllm#23673); then lora_name, extra_keys, group_idx, kv_cache_spec_kind,
                kv_cache_spec_sliding_window (vllm#27577, #33304, #37688, #40984); trailing
                defaults omitted
  v0.26.0       tagged maps (vllm#42892, merged 2026-06-09): each event {"type": "BlockStored",
                "block_hashes": ..., ...}; the batch stays an array [ts, events, data_parallel_rank];
                replay replies carry the topic frame (vllm#45177)
  later main    the same maps, plus `locality`; one commit of main wrote the batch as a map
                {"ts", "events", "data_parallel_rank"}: read too

Array fields were only ever appended, so one field order reads every array version. Unknown map
keys and unknown event types are ignored (vLLM keeps adding fields). A block hash stays what it
was on the wire: an int (signed or unsigned) or bytes.

We write what v0.26.0 writes (so vLLM's own example subscriber reads our stream): an array batch,
map events, unsigned 64-bit int hashes, medium "GPU" (vLLM's name for the engine's own KV pool,
whatever the device).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import msgspec

from engine.core.kv_cache_events import CacheCleared, CachedBlocks, EvictedBlocks, KVCacheChange

BlockHash = int | bytes
MEDIUM_GPU = "GPU"

# positional order of the array encoding (fields after the tag), as vLLM appended them
_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium",
                  "lora_name", "extra_keys", "group_idx", "kv_cache_spec_kind", "kv_cache_spec_sliding_window",
                  "locality")
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx", "locality")
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class BlockStored:
    """Full blocks cached, a chain: block i's parent is block i-1, the first one's `parent_block_hash`
    (None: it starts a prompt); `token_ids` are every block's tokens, `block_size` each."""

    block_hashes: tuple[BlockHash, ...]
    parent_block_hash: BlockHash | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True)
class BlockRemoved:
    block_hashes: tuple[BlockHash, ...]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True)
class EventBatch:
    ts: float  # Unix seconds
    events: tuple[KVEvent, ...]
    data_parallel_rank: int | None = None


# ---- decoding ------------------------------------------------------------------------------------
_decoder = msgspec.msgpack.Decoder()


def decode_batch(payload: bytes) -> EventBatch:
    """A batch in any supported vLLM encoding; ValueError if it is none of them."""
    try:
        raw = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not msgpack: {exc}") from None
    if isinstance(raw, dict):
        ts, events, rank = raw.get("ts"), raw.get("events"), raw.get("data_parallel_rank")
    elif isinstance(raw, list) and len(raw) >= 2:
        ts, events, rank = raw[0], raw[1], raw[2] if len(raw) > 2 else None
    else:
        raise ValueError(f"not a KV event batch: {type(raw).__name__}")
    if not isinstance(ts, (int, float)) or not isinstance(events, list):
        raise ValueError("a KV event batch needs a timestamp and a list of events")
    decoded = (_decode_event(e) for e in events)
    return EventBatch(float(ts), tuple(e for e in decoded if e is not None), rank)


def _decode_event(raw: Any) -> KVEvent | None:
    """One event, array or map; None for an event type we do not know."""
    if isinstance(raw, dict):
        tag, fields = raw.get("type"), raw
    elif isinstance(raw, list) and raw:
        tag = raw[0]
        names = _STORED_FIELDS if tag == "BlockStored" else _REMOVED_FIELDS if tag == "BlockRemoved" else ()
        fields = dict(zip(names, raw[1:]))
    else:
        raise ValueError(f"not a KV event: {raw!r:.80}")
    if tag == "BlockStored":
        return BlockStored(_hashes(fields), _hash(fields.get("parent_block_hash")),
                           tuple(fields.get("token_ids") or ()), int(fields["block_size"]),
                           fields.get("lora_id"), fields.get("medium"), fields.get("lora_name"),
                           fields.get("group_idx"))
    if tag == "BlockRemoved":
        return BlockRemoved(_hashes(fields), fields.get("medium"), fields.get("group_idx"))
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    return None


def _hashes(fields: dict[str, Any]) -> tuple[BlockHash, ...]:
    hashes = fields.get("block_hashes")
    if not isinstance(hashes, list):
        raise ValueError("a block event without block_hashes")
    return tuple(_hash(h) for h in hashes)


def _hash(value: Any) -> BlockHash | None:
    if value is None or isinstance(value, (int, bytes)):
        return value
    raise ValueError(f"a block hash must be an int or bytes, not {type(value).__name__}")


# ---- encoding ------------------------------------------------------------------------------------
_encoder = msgspec.msgpack.Encoder()


def encode_batch(batch: EventBatch) -> bytes:
    """The batch as vLLM v0.26.0 writes it: [ts, [event maps], data_parallel_rank]."""
    return _encoder.encode([batch.ts, [_event_map(e) for e in batch.events], batch.data_parallel_rank])


def _event_map(event: KVEvent) -> dict[str, Any]:
    if isinstance(event, BlockStored):  # lora_id, medium, lora_name have no default: always written
        out = {"type": "BlockStored", "block_hashes": list(event.block_hashes),
               "parent_block_hash": event.parent_block_hash, "token_ids": list(event.token_ids),
               "block_size": event.block_size, "lora_id": event.lora_id, "medium": event.medium,
               "lora_name": event.lora_name}
    elif isinstance(event, BlockRemoved):
        out = {"type": "BlockRemoved", "block_hashes": list(event.block_hashes), "medium": event.medium}
    else:
        return {"type": "AllBlocksCleared"}
    if event.group_idx is not None:  # omitted at its default, as msgspec's omit_defaults does
        out["group_idx"] = event.group_idx
    return out


# ---- from the engine -----------------------------------------------------------------------------
def wire_hash(engine_hash: int) -> int:
    """Our block manager's hash (Python's hash(): signed 64-bit) as vLLM's default wire form, an
    unsigned 64-bit int."""
    return engine_hash & _U64


def batch_from_changes(changes: Sequence[KVCacheChange], block_size: int, ts: float | None = None,
                       data_parallel_rank: int | None = 0) -> EventBatch:
    """The engine's prefix-cache changes of one step as a vLLM event batch."""
    events: list[KVEvent] = []
    for change in changes:
        if isinstance(change, CachedBlocks):
            parent = None if change.parent is None else wire_hash(change.parent)
            events.append(BlockStored(tuple(wire_hash(h) for h in change.hashes), parent, change.token_ids,
                                      block_size, medium=MEDIUM_GPU))
        elif isinstance(change, EvictedBlocks):
            events.append(BlockRemoved(tuple(wire_hash(h) for h in change.hashes), medium=MEDIUM_GPU))
        elif isinstance(change, CacheCleared):
            events.append(AllBlocksCleared())
    return EventBatch(time.time() if ts is None else ts, tuple(events), data_parallel_rank)
