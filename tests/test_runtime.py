"""Process-level settings of the training runs."""

import os
import subprocess
import sys

import pytest

# Bytes glibc holds in mmap-ed blocks (mallinfo2().hblkhd) after a 64 MiB
# tensor is allocated, printed by a fresh process.
PROBE = """
import ctypes, sys
import torch
from ipl.runtime import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory()
before = libc.mallinfo2().hblkhd
x = torch.ones(16 * 2**20)  # 64 MiB
print(applied, libc.mallinfo2().hblkhd - before)
"""


def probe(env_value):
    env = {**os.environ, "IPL_KEEP_FREED_MEMORY": env_value}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc setting")
def test_keep_freed_memory_serves_large_tensors_from_the_heap():
    applied, mmapped = probe("1")
    assert applied
    assert mmapped == 0  # the 64 MiB block came from the heap, which keeps freed memory
    applied, mmapped = probe("0")  # opted out: glibc's default, a fresh mmap
    assert not applied
    assert mmapped >= 64 * 2**20
