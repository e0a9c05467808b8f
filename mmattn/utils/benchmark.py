"""Timing and peak-memory helpers shared by the benchmark scripts in ``tools/analysis_tools``.

Peak memory: on CUDA, torch's peak allocator statistics. On CPU, the growth of the resident-set
high-water mark (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) over one call; run it in
a child process with ``MALLOC_MMAP_THRESHOLD_`` fixed (:func:`cpu_memory_env`) so that freed
buffers leave the resident set.
"""
import os
import statistics
import time
from typing import Callable, Dict

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


def interleaved_medians(fns: Dict[str, Callable[[], None]], warmup: int,
                        repeats: int) -> Dict[str, float]:
    """Median wall time of each function, its repeats interleaved with the others' (round
    ``r`` times every function once), so that machine drift hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, list] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
