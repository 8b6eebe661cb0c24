"""Which GPUs a pool runs on, and where their host memory should live (NUMA).

A runner on a chosen device (``Runner(device_index=i)``) makes that device current around every call
(:class:`DeviceLock`); this module resolves ``devices: all | [0, 1]`` to indices and answers the NUMA
question for each device from sysfs, without any NUMA library:

- ``/sys/bus/pci/devices/<bdf>/numa_node`` is the node the GPU's PCIe root hangs off (``-1``: the host
  does not say, e.g. one socket, or a VM);
- ``/sys/devices/system/node/node<N>/cpulist`` lists that node's CPUs.

Decision: where a device has a node (>= 0) and the host has more than one node, the runner allocates
its pinned staging from a thread pinned to that node's CPUs (:func:`local_allocation`). Pinned
memory is placed on first touch, and ``cudaHostAlloc`` touches every page while pinning, so the pages
land on the GPU's node and its DMA does not cross the socket interconnect. The caller's own arrays
(``pageable``/``registered``) are not moved: that is the caller's placement. Elsewhere nothing is done.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from typing_extensions import Self

from trtflow.errors import BackendMissing, InputError
from trtflow.runtime import cuda

SYS = Path("/sys")


@dataclass(frozen=True)
class DevicePlacement:
    """A device, its PCI address and the NUMA node and CPUs its host memory should come from."""

    index: int
    pci_bus_id: str | None
    numa_node: int | None          # None: the host does not expose it (or has one node)
    cpus: frozenset[int]           # that node's CPUs this process may use (empty: no pinning)

    def describe(self) -> str:
        where = (f"NUMA node {self.numa_node} (CPUs {_ranges(self.cpus) or 'none allowed here'})"
                 if self.numa_node is not None else "no NUMA node")
        return f"GPU {self.index} at {self.pci_bus_id or '?'}: {where}"


def resolve(spec: str | int | Sequence[int] | None) -> list[int]:
    """``None`` -> [current device]; ``"all"`` -> every visible device; an int or a list -> checked indices."""
    count = cuda.device_count() if cuda.cuda_available() else 0
    if count == 0:
        raise BackendMissing("devices: no CUDA GPU is visible here", hint="run on a GPU host, or drop `devices`")
    if spec is None:
        return [cuda.current_device()]
    if spec == "all":
        return list(range(count))
    if isinstance(spec, str):
        raise InputError(f"devices: expected 'all' or a list of GPU indices, got {spec!r}")
    indices = [spec] if isinstance(spec, int) else [int(i) for i in spec]
    if not indices:
        raise InputError("devices: the list is empty", hint="name at least one GPU, or write devices: all")
    if len(set(indices)) != len(indices):
        raise InputError(f"devices: {indices} names a GPU twice", hint="use instances: N for several engines per GPU")
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise InputError(f"devices: no GPU {bad} here ({count} visible: 0..{count - 1})",
                         hint="check CUDA_VISIBLE_DEVICES and nvidia-smi")
    return indices


def placement(index: int, *, sys_root: Path = SYS) -> DevicePlacement:
    """Where device ``index``'s host memory should come from (never raises on a missing sysfs)."""
    try:
        bdf: str | None = cuda.pci_bus_id(index)
    except Exception:  # noqa: BLE001 - an unknown address only means "no NUMA information"
        bdf = None
    node = numa_node(bdf, sys_root=sys_root) if bdf else None
    cpus = node_cpus(node, sys_root=sys_root) if node is not None else frozenset()
    if node is not None and _node_count(sys_root) < 2:
        node, cpus = None, frozenset()  # one node: placement is the default already
    return DevicePlacement(index, bdf, node, cpus)


def numa_node(bdf: str, *, sys_root: Path = SYS) -> int | None:
    """``numa_node`` of the PCI device ``bdf`` (None where sysfs says -1 or has no such file)."""
    try:
        value = int((sys_root / "bus/pci/devices" / bdf / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return None
    return value if value >= 0 else None


def node_cpus(node: int, *, sys_root: Path = SYS) -> frozenset[int]:
    """CPUs of NUMA node ``node`` (``cpulist`` syntax: ``0-15,32-47``), limited to those this process may use."""
    try:
        text = (sys_root / f"devices/system/node/node{node}/cpulist").read_text().strip()
    except OSError:
        return frozenset()
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    allowed = _allowed_cpus()
    return frozenset(cpus & allowed) if allowed else frozenset(cpus)


def _node_count(sys_root: Path) -> int:
    try:
        return sum(1 for p in (sys_root / "devices/system/node").glob("node[0-9]*"))
    except OSError:
        return 0


def _allowed_cpus() -> set[int]:
    getter = getattr(os, "sched_getaffinity", None)
    return set(getter(0)) if callable(getter) else set()


_affinity_lock = threading.Lock()


@contextlib.contextmanager
def local_allocation(place: DevicePlacement) -> Iterator[None]:
    """Run the body (the runner's allocations) on ``place``'s NUMA node CPUs, then restore the affinity.

    ``sched_setaffinity(0, ...)`` changes the calling thread only (Linux). Without a node, or where
    the call is refused (containers may forbid it), the body runs where it is.
    """
    setter = getattr(os, "sched_setaffinity", None)
    if not place.cpus or not callable(setter):
        yield
        return
    with _affinity_lock:
        before = _allowed_cpus()
        try:
            setter(0, place.cpus)
        except OSError:
            yield
            return
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                setter(0, before)


def _ranges(cpus: frozenset[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``0-2,5``."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


class DeviceLock:
    """The lock of a runner on a chosen device: a re-entrant lock that also makes that device current
    for the body and gives the caller its own device back afterwards. Every public runner method takes
    its lock, so every CUDA call of such a runner runs with its device current. (A runner on the
    current device keeps a plain ``threading.RLock``: the request path pays nothing for this.)"""

    __slots__ = ("_depth", "_index", "_lock", "_restore")

    def __init__(self, index: int) -> None:
        self._lock = threading.RLock()
        self._index = index
        self._depth = 0
        self._restore = -1

    def __enter__(self) -> Self:
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1:
            try:
                cur = cuda.current_device()
                if cur != self._index:
                    cuda.set_device(self._index)
                    self._restore = cur
            except BaseException:
                self._depth -= 1
                self._lock.release()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._restore >= 0:
            restore, self._restore = self._restore, -1
            with contextlib.suppress(Exception):
                cuda.set_device(restore)
        self._lock.release()


__all__ = ["DeviceLock", "DevicePlacement", "local_allocation", "node_cpus", "numa_node", "placement", "resolve"]
