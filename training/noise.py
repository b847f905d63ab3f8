"""The project's seeded Gaussian noise, bit-for-bit the same as the server's (pipeline/rng.ts):
mulberry32 for uniform uint32s, Box-Muller for normals, computed in float64, stored as float32.
Sharing it lets Python and the server start from the same x_T for the same seed."""
from __future__ import annotations

import math

import numpy as np

MASK = 0xFFFFFFFF


def _imul(a: int, b: int) -> int:
    return (a * b) & MASK


def uint32_stream(seed: int):
    state = seed & MASK
    while True:
        state = (state + 0x6D2B79F5) & MASK
        t = state
        t = _imul(t ^ (t >> 15), t | 1)
        t ^= (t + _imul(t ^ (t >> 7), t | 61)) & MASK
        yield (t ^ (t >> 14)) & MASK


def gaussian_noise(seed: int, count: int) -> np.ndarray:
    out = np.empty(count, dtype=np.float32)
    stream = uint32_stream(seed)
    i = 0
    while i < count:
        u1 = (next(stream) + 1) / 4294967296.0  # (0, 1]: log is finite
        u2 = next(stream) / 4294967296.0
        r = math.sqrt(-2.0 * math.log(u1))
        out[i] = r * math.cos(2.0 * math.pi * u2)
        if i + 1 < count:
            out[i + 1] = r * math.sin(2.0 * math.pi * u2)
        i += 2
    return out
