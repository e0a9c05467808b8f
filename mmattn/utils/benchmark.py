"""Timing and peak-memory helpers shared by the benchmark scripts in ``tools/analysis_tools``.

Peak memory: on CUDA, torch's peak allocator statistics. On CPU, the growth of the resident-set
high-water mark (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) over one call; run it in
a child process with ``MALLOC_MMAP_THRESHOLD_`` fixed (:func:`cpu_memory_env`) so that freed
buffers leave the resident set.
"""
import os
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch


def cpu_memory_env() -> Dict[str, str]:
    """Environment of a CPU memory probe process: glibc mmaps (and returns) buffers >= 64 KiB."""
    return dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')


class PeakMemory:
    """Context manager: peak memory growth of the block, in MiB (``.mib``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @staticmethod
    def _status(field: str) -> int:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f'{field} not in /proc/self/status')

    def __enter__(self) -> 'PeakMemory':
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # resets VmHWM to the current RSS
            self.base = self._status('VmRSS')
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = self._status('VmHWM')
        self.mib = max(peak - self.base, 0) / 2**20


def median_seconds(fn: Callable[[], None], device: torch.device, warmup: int,
                   repeats: int) -> float:
    """Median wall time of ``repeats`` calls after ``warmup`` calls (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_mib(fn: Callable[[], None], device: torch.device) -> float:
    """Peak memory growth of the second call of ``fn`` (the first one initialises lazily)."""
    fn()
    with PeakMemory(device) as mem:
        fn()
    return mem.mib


def interleaved_times(fns: Dict[str, Callable[[], None]], warmup: int,
                      repeats: int) -> Dict[str, List[float]]:
    """Wall times (seconds) of ``repeats`` calls of each function after ``warmup`` calls, the
    repeats interleaved (round ``r`` times every function once, in the dict's order), so that
    machine drift hits all of them alike; entry ``r`` of every list comes from round ``r``."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(fns: Dict[str, Callable[[], None]], warmup: int,
                        repeats: int) -> Dict[str, float]:
    """Median wall time of each function over interleaved repeats (:func:`interleaved_times`)."""
    return {name: statistics.median(t)
            for name, t in interleaved_times(fns, warmup, repeats).items()}


def paired_ratios(times: Sequence[float], base: Sequence[float]) -> Tuple[float, float, float]:
    """(median, lower quartile, upper quartile) of the per-round ratios ``times[r] / base[r]``
    of two interleaved series (:func:`interleaved_times`).

    A slow spell of the machine hits both calls of a round, so these ratios scatter less than
    the two series do, and their quartiles show how far one run's ratio can be trusted: the
    ratio of the two medians can move by as much as the machine's drift."""
    if len(times) != len(base) or not times:
        raise ValueError(f'paired_ratios needs two series of the same non-zero length, got '
                         f'{len(times)} and {len(base)}')
    ratios = [t / b for t, b in zip(times, base)]
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method='inclusive')
    return statistics.median(ratios), q1, q3
