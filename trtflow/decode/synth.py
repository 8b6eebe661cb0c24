"""Deterministic photo-like test images (numpy only): a street scene, not noise.

Benchmarks and validation need images whose JPEG size and decode cost behave like photographs: smooth
regions, hard edges, textures with a natural 1/f spectrum, a little sensor noise. Random pixels would
compress to nearly raw size and decode far slower than any photo; flat colours far faster.
"""

from __future__ import annotations

import numpy as np


def pink_noise(rng: np.random.Generator, shape: tuple[int, int], *, exponent: float = 1.0) -> np.ndarray:
    """Zero-mean, unit-std noise whose amplitude spectrum falls as 1/f**exponent (natural images: ~1)."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    spectrum = (rng.standard_normal((h, w // 2 + 1)) + 1j * rng.standard_normal((h, w // 2 + 1))) / f ** exponent
    spectrum[0, 0] = 0.0
    x = np.fft.irfft2(spectrum, s=(h, w))
    return ((x - x.mean()) / (x.std() + 1e-12)).astype(np.float32)


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An ``[height, width, 3]`` uint8 RGB street scene: sky with clouds, hills, buildings with windows,
    a road with lane marks, textured ground, a soft sun, vignetting and sensor noise."""
    rng = np.random.default_rng(seed)
    h, w = height, width
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    img = np.empty((h, w, 3), dtype=np.float32)

    # sky: gradient + clouds
    horizon = 0.46 + 0.04 * np.sin(6.0 * x + rng.uniform(0, 6)) + 0.02 * pink_noise(rng, (1, w), exponent=1.5)
    top, low = np.array([60, 110, 190], np.float32), np.array([185, 205, 230], np.float32)
    t = np.clip(y / 0.5, 0, 1)[..., None]
    img[...] = top * (1 - t) + low * t
    clouds = np.clip(pink_noise(rng, (h, w), exponent=1.3) * 0.8 - 0.2, 0, 1)[..., None]
    img += (255.0 - img) * clouds * 0.7
    sun_y, sun_x = 0.15, rng.uniform(0.6, 0.85)
    r = np.sqrt(((y - sun_y) * h) ** 2 + ((x - sun_x) * w) ** 2) / max(h, w)
    img += (np.exp(-(r / 0.06) ** 2) * 90 + (r < 0.018) * 120)[..., None]

    # ground below the horizon: low-frequency colour, high-frequency texture
    ground = y > horizon
    g_low = pink_noise(rng, (h, w), exponent=1.8)[..., None]
    g_tex = pink_noise(rng, (h, w), exponent=1.1)[..., None]
    soil = np.array([95, 115, 60], np.float32) + g_low * np.array([25, 20, 15], np.float32) + g_tex * 11
    img = np.where(ground[..., None], soil, img)

    # buildings on the horizon, with window grids
    for _ in range(9):
        bx0 = rng.uniform(-0.05, 0.95)
        bw, bh = rng.uniform(0.04, 0.12), rng.uniform(0.12, 0.32)
        x0, x1 = int(bx0 * w), int(min(bx0 + bw, 1.0) * w)
        base = int(float(np.mean(horizon)) * h) + int(rng.uniform(0, 0.03) * h)
        y0 = max(base - int(bh * h), 0)
        if x1 <= max(x0, 0) or base <= y0:
            continue
        x0 = max(x0, 0)
        facade = rng.uniform(70, 200, 3).astype(np.float32)
        shade = np.linspace(1.0, 0.8, x1 - x0, dtype=np.float32)[None, :, None]
        img[y0:base, x0:x1] = facade * shade
        wy, wx = max(h // 80, 3), max(w // 160, 3)
        for yy in range(y0 + wy, base - wy, 2 * wy):
            for xx in range(x0 + wx, x1 - wx, 2 * wx):
                lit = rng.random() < 0.3
                img[yy:yy + wy, xx:xx + wx] = (235, 220, 160) if lit else facade * 0.45

    # road: a trapezoid to a vanishing point, with dashed lane marks
    vy, vx = float(np.mean(horizon)) + 0.02, 0.5
    half = (y - vy) / (1 - vy) * 0.42
    road = (y > vy) & (np.abs(x - vx) < half)
    asphalt = 88 + pink_noise(rng, (h, w), exponent=0.8) * 7
    img = np.where(road[..., None], asphalt[..., None] * np.array([1.0, 1.0, 1.05], np.float32), img)
    lane = road & (np.abs(x - vx) < half * 0.025 + 1.0 / w) & (np.sin((1.0 / np.maximum(y - vy, 1e-3)) * 3.0) > 0)
    img[lane] = (230, 230, 220)

    # optics and sensor: slight vignetting, noise
    vig = 1.0 - 0.25 * (((x - 0.5) ** 2 + (y - 0.5) ** 2) / 0.5)
    img *= vig[..., None]
    img += rng.normal(0.0, 0.6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)
