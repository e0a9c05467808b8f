"""Shared fixtures of the op tests."""
import pytest
import torch


@pytest.fixture
def num_threads():
    """Sets the intra-op thread count for one test (``num_threads(4)``) and restores it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture(scope='session')
def splits_avx512() -> bool:
    """Whether this CPU runs AVX-512 as two 256-bit halves: AMD family 0x19 (Zen 4), read from
    /proc/cpuinfo (the ops read CPUID)."""
    try:
        with open('/proc/cpuinfo') as f:
            info = f.read().split('\n\n')[0]
    except OSError:
        return False
    fields = {k.strip(): v.strip() for k, v in
              (line.split(':', 1) for line in info.splitlines() if ':' in line)}
    return fields.get('vendor_id') == 'AuthenticAMD' and fields.get('cpu family') == '25'
