"""Measure the host<->device link in the same run as a benchmark, so every result has its floor."""

from __future__ import annotations

import time

import numpy as np


def measure_link(nbytes: int = 64 << 20, *, seconds: float = 1.0) -> dict[str, float]:
    """GB/s of pinned and pageable H2D/D2H copies of ``nbytes``, timed with CUDA events.

    Each direction gets ~seconds/4 of repeated copies after one warm-up copy; the median is reported.
    """
    from trtflow.runtime import cuda

    stream = cuda.stream_create()
    start, end = cuda.event_create(timing=True), cuda.event_create(timing=True)
    dev = cuda.malloc(nbytes)
    pinned = cuda.host_alloc(nbytes)
    pageable = np.ones(nbytes, dtype=np.uint8)
    results: dict[str, float] = {}
    try:
        cases = {
            "pinned_h2d": (dev, pinned, "h2d"),
            "pinned_d2h": (pinned, dev, "d2h"),
            "pageable_h2d": (dev, pageable.ctypes.data, "h2d"),
            "pageable_d2h": (pageable.ctypes.data, dev, "d2h"),
        }
        for name, (dst, src, kind) in cases.items():
            cuda.memcpy_async(dst, src, nbytes, kind, stream=stream)  # type: ignore[arg-type]
            cuda.stream_synchronize(stream)
            samples: list[float] = []
            deadline = time.perf_counter() + seconds / len(cases)
            while time.perf_counter() < deadline or len(samples) < 3:
                cuda.event_record(start, stream=stream)
                cuda.memcpy_async(dst, src, nbytes, kind, stream=stream)  # type: ignore[arg-type]
                cuda.event_record(end, stream=stream)
                cuda.event_synchronize(end)
                samples.append(cuda.event_elapsed_ms(start, end))
            results[name] = nbytes / (float(np.median(samples)) * 1e-3) / 1e9
    finally:
        cuda.free(dev)
        cuda.free_host(pinned)
        cuda.event_destroy(start)
        cuda.event_destroy(end)
        cuda.stream_destroy(stream)
    return results


def device_summary() -> str:
    from trtflow.runtime import cuda

    d = cuda.device_properties()
    return f"{d.name} (sm_{d.compute_capability[0]}{d.compute_capability[1]}, {d.total_memory / 2**30:.0f} GiB)"


def measure_links(indices: list[int], *, seconds: float = 0.5) -> dict[int, dict[str, float]]:
    """:func:`measure_link` on each GPU in turn (that GPU current): the PCIe link of each."""
    from trtflow.runtime import cuda

    before = cuda.current_device()
    try:
        out = {}
        for i in indices:
            cuda.set_device(i)
            out[i] = measure_link(32 << 20, seconds=seconds)
        return out
    finally:
        cuda.set_device(before)


def measure_host_h2d(indices: list[int], nbytes: int = 64 << 20, *, seconds: float = 1.0) -> float:
    """GB/s of pinned H2D copies to every GPU of ``indices`` at the same time (one stream each): the
    host's total, which can be lower than the sum of the links (root complex, memory, NUMA)."""
    from trtflow.runtime import cuda

    before = cuda.current_device()
    res: list[tuple[int, int, int, int]] = []  # device, stream, device buffer, pinned buffer
    try:
        for i in indices:
            cuda.set_device(i)
            res.append((i, cuda.stream_create(), cuda.malloc(nbytes), cuda.host_alloc(nbytes)))
        rounds = 0

        def one_round() -> None:
            for i, s, dev, host in res:
                cuda.set_device(i)
                cuda.memcpy_async(dev, host, nbytes, "h2d", stream=s)

        def sync_all() -> None:
            for i, s, _, _ in res:
                cuda.set_device(i)
                cuda.stream_synchronize(s)

        one_round()
        sync_all()
        t0 = time.perf_counter()
        while rounds < 3 or time.perf_counter() - t0 < seconds:
            for _ in range(4):
                one_round()
            rounds += 4
            sync_all()
        elapsed = time.perf_counter() - t0
        return rounds * nbytes * len(res) / elapsed / 1e9
    finally:
        for i, s, dev, host in res:
            cuda.set_device(i)
            cuda.stream_synchronize(s)
            cuda.free(dev)
            cuda.free_host(host)
            cuda.stream_destroy(s)
        cuda.set_device(before)
