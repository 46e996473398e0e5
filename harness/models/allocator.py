"""The C allocator's settings for inference on CPU: freed tensor memory kept for reuse.

glibc hands each block above a threshold (128 KiB at first, raised as blocks are freed, at most
32 MiB) to the kernel when it is freed, and trims the top of its heap beyond twice that; the
next tensor of that size then takes a page fault on each 4 KiB page it touches. A forward of the
130m-shaped Mamba-2 over 4096 tokens (2048-token pieces, whose largest tensor is ~15 MB)
measured from 1 to 806K faults between runs of the same script, the worst 12% slower. With the
threshold fixed at its largest and the heap never trimmed, the pieces' working memory stays
mapped (0-72K faults in the same runs). Memory is then held at its peak until the process
exits, which is the peak a run needs anyway.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
LARGEST_MMAP_THRESHOLD = 32 * 2**20  # glibc's cap on 64-bit systems
NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Set this process's glibc allocator as above; False where the C library has no mallopt
    (not glibc) or refuses the values, in which case nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, LARGEST_MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
    )
