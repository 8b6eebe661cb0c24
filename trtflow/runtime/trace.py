"""Spans of the request path: NVTX ranges (they show up in Nsight Systems, from the optional ``nvtx``
package) and, while :func:`cpu_phases` is active, the host CPU time spent inside each span.

The request path checks ``trace.on`` itself and enters no context at all when it is False (no nvtx, no
accounting): a request pays one attribute lookup per stage, nothing else.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any


def _load_nvtx() -> Any:
    """The optional ``nvtx`` module; None when absent or broken."""
    if importlib.util.find_spec("nvtx") is None:
        return None
    try:
        return importlib.import_module("nvtx")
    except Exception:  # noqa: BLE001 - a broken install must not break inference
        return None


nvtx: Any = _load_nvtx()
#: the request path enters spans only when True: NVTX is loaded or host CPU accounting is on
on: bool = nvtx is not None
ranges: dict[str, Any] = {}  # name -> annotation, built once each
_NO_RANGE = contextlib.nullcontext()


@dataclass
class CpuPhases:
    """Host time spent inside each span name while :func:`cpu_phases` was active, in ms (sums).

    ``thread_ms``: CPU time of the thread that entered the span (``time.thread_time``); ``process_ms``: CPU
    time of every thread of the process meanwhile (``time.process_time``: includes worker threads of
    libraries, e.g. nvImageCodec's decode threads, and a CUDA wait spinning); ``wall_ms``: elapsed.
    Spans do not nest on the request path, so the phases add up.
    """

    thread_ms: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    process_ms: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    wall_ms: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))


_cpu: CpuPhases | None = None


class _Timed:
    """One span while accounting is on: its NVTX range (if any) plus the three clocks."""

    __slots__ = ("_acc", "_inner", "_name", "_p", "_t", "_w")

    def __init__(self, name: str, inner: contextlib.AbstractContextManager[Any], acc: CpuPhases) -> None:
        self._name, self._inner, self._acc = name, inner, acc
        self._t = self._p = self._w = 0.0

    def __enter__(self) -> None:
        self._inner.__enter__()
        self._t, self._p, self._w = time.thread_time(), time.process_time(), time.perf_counter()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        t, p, w = time.thread_time(), time.process_time(), time.perf_counter()
        acc, name = self._acc, self._name
        acc.thread_ms[name] += (t - self._t) * 1e3
        acc.process_ms[name] += (p - self._p) * 1e3
        acc.wall_ms[name] += (w - self._w) * 1e3
        acc.calls[name] += 1
        self._inner.__exit__(et, ev, tb)


def _range(name: str) -> contextlib.AbstractContextManager[Any]:
    if nvtx is None:
        return _NO_RANGE
    r = ranges.get(name)
    if r is None:
        r = ranges[name] = nvtx.annotate(name, domain="trtflow")
    return r  # type: ignore[no-any-return]


def span(name: str) -> contextlib.AbstractContextManager[Any]:
    """NVTX range ``name`` (domain trtflow), built once and reused; a shared no-op without nvtx. While
    :func:`cpu_phases` is active it also adds the span's host CPU time to the accounting."""
    acc = _cpu
    if acc is not None:
        return _Timed(name, _range(name), acc)
    return _range(name)


@contextlib.contextmanager
def cpu_phases() -> Iterator[CpuPhases]:
    """Account host CPU time per span name until the block ends (benchmarks: where does a request's CPU
    time go). Process-wide and not thread-safe: measure one thread's requests at a time."""
    global _cpu, on
    prev = _cpu
    acc = _cpu = CpuPhases()
    on = True
    try:
        yield acc
    finally:
        _cpu = prev
        on = nvtx is not None or prev is not None


__all__ = ["CpuPhases", "cpu_phases", "nvtx", "on", "ranges", "span"]
