"""keep_freed_memory: large arrays made and dropped in a loop reuse the heap instead of faulting in new pages."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Minor page faults of 10 rounds of making and dropping a 40 MB array (10240 pages each), in a fresh process:
# above glibc's largest automatic mmap threshold (32 MB), so by default each one is mapped and unmapped anew.
PROBE = """
import resource, sys
import numpy as np
from deepfake.utils.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
np.ones(10 << 20, dtype=np.float32)  # the first one faults in, either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    a = np.ones(10 << 20, dtype=np.float32)
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_freed_arrays_are_reused_without_new_page_faults_once_freed_memory_is_kept():
    default, kept = _faults("default"), _faults("keep")
    # glibc's default maps and unmaps every 40 MB array: its pages (4 KB, or 2 MB huge pages) fault in anew.
    assert default >= 10 * 100
    assert kept * 10 < default  # kept: the heap block is reused
