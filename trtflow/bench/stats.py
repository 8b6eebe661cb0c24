"""Statistics and trtexec-style diagnostics for benchmark samples (pure numpy, no GPU)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Stats:
    """Summary of samples in milliseconds."""

    n: int
    mean: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float
    cv: float  # coefficient of variation (std / mean)

    @classmethod
    def of(cls, samples: list[float] | np.ndarray) -> Stats:
        x = np.asarray(samples, dtype=np.float64)
        if x.size == 0:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan, nan, nan)
        mean = float(x.mean())
        p50, p90, p99 = (float(np.percentile(x, q)) for q in (50, 90, 99))
        return cls(n=int(x.size), mean=mean, min=float(x.min()), p50=p50, p90=p90, p99=p99, max=float(x.max()),
                   cv=float(x.std() / mean) if mean > 0 else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diagnostics(*, wall: Stats, h2d: Stats | None, compute: Stats | None, d2h: Stats | None,
                host: Stats | None, gpu: bool = True) -> list[str]:
    """trtexec's warnings: enqueue-bound, transfer-bound, unstable; plus where the time goes.

    ``gpu=False`` (the CPU engine): no GPU advice (clocks, graphs); only what helps on a CPU."""
    out = []
    if host is not None and compute is not None and compute.mean > 0 and host.mean > 0.8 * compute.mean:
        out.append(f"enqueue-bound: host time per call {host.mean:.3f} ms > 0.8 x GPU compute {compute.mean:.3f} ms "
                   "(try cuda_graph: true, or larger batches)")
    if compute is not None and compute.mean > 0:
        for name, st in (("H2D", h2d), ("D2H", d2h)):
            if st is not None and st.mean >= compute.mean:
                out.append(f"transfer-bound: {name} {st.mean:.3f} ms >= compute {compute.mean:.3f} ms "
                           "(move fewer bytes: uint8/fp16 I/O, reducers; or pipeline to hide it)")
    if wall.cv > 0.025:
        out.append(f"unstable: coefficient of variation of latency {wall.cv:.1%} > 2.5% "
                   + ("(lock clocks, close other GPU work, or run longer)" if gpu else
                      "(close other work on this machine, or run longer: --iterations / --duration)"))
    return out
