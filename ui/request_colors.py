"""A colour for each live request that no other live request has (up to PALETTE_SIZE at once),
kept for the request's whole life and given to another only after it ends: a presenter can say
"the orange one" and it stays orange."""
from __future__ import annotations

import colorsys
from typing import Iterable

PALETTE_SIZE = 64


def _bit_reversed(k: int, bits: int) -> int:
    return int(f"{k:0{bits}b}"[::-1], 2)


def palette(size: int = PALETTE_SIZE) -> tuple[str, ...]:
    """`size` colours (a multiple of 4): 4 bands of lightness and saturation, each with evenly
    spaced hues (22.5 degrees apart for 64), the bands' hues offset from each other. Slots are
    ordered by bit-reversed hue, so that the first few requests get hues far apart. None is near
    white or grey (those mean free blocks on the map)."""
    bands = ((0.50, 0.95), (0.30, 0.90), (0.70, 0.85), (0.40, 0.65))  # (lightness, saturation)
    per_band = size // len(bands)
    bits = max(1, (per_band - 1).bit_length())
    colors = []
    for i in range(size):
        band, k = i % len(bands), i // len(bands)
        hue = _bit_reversed(k, bits) / 2 ** bits + band / size
        r, g, b = colorsys.hls_to_rgb(hue % 1.0, *bands[band])
        colors.append("#" + "".join(f"{round(255 * c):02x}" for c in (r, g, b)))
    return tuple(colors)


class RequestColors:
    """Stateful: call `update` with the live requests at each refresh; it returns their colours."""

    def __init__(self, size: int = PALETTE_SIZE) -> None:
        self.palette = palette(size)
        self._held: dict[str, int] = {}  # request id -> its palette slot

    def update(self, live: Iterable[str]) -> dict[str, str]:
        live = list(dict.fromkeys(live))
        for request_id in set(self._held) - set(live):  # ended: their colours are free again
            del self._held[request_id]
        free = sorted(set(range(len(self.palette))) - set(self._held.values()), reverse=True)
        for k, request_id in enumerate(r for r in live if r not in self._held):
            # past the palette's size, colours repeat: the newest share with the oldest slots
            self._held[request_id] = free.pop() if free else k % len(self.palette)
        return {r: self.palette[self._held[r]] for r in live}
