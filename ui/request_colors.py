"""The palette of request colours. The live view (ui/live/feed_state.js, RequestColors) gives each
live request a slot no other live request holds (up to PALETTE_SIZE at once), kept for the
request's whole life and given to another only after it ends: a presenter can say "the orange
one" and it stays orange."""
from __future__ import annotations

import colorsys

PALETTE_SIZE = 64


def _bit_reversed(k: int, bits: int) -> int:
    return int(f"{k:0{bits}b}"[::-1], 2)


def palette(size: int = PALETTE_SIZE) -> tuple[str, ...]:
    """`size` colours (a multiple of 4): 4 bands of lightness and saturation, each with evenly
    spaced hues (22.5 degrees apart for 64), the bands' hues offset from each other. Slots are
    ordered band by band, the first band's first: within a band by bit-reversed hue, so that the
    first 16 requests get 16 hues, the first few far apart. None is near white or grey (those mean
    free blocks on the map)."""
    bands = ((0.50, 0.95), (0.30, 0.90), (0.70, 0.85), (0.40, 0.65))  # (lightness, saturation)
    per_band = size // len(bands)
    bits = max(1, (per_band - 1).bit_length())
    colors = []
    for i in range(size):
        band, k = divmod(i, per_band)
        hue = _bit_reversed(k, bits) / 2 ** bits + band / size
        r, g, b = colorsys.hls_to_rgb(hue % 1.0, *bands[band])
        colors.append("#" + "".join(f"{round(255 * c):02x}" for c in (r, g, b)))
    return tuple(colors)
