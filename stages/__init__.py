"""The pipeline's stages (one module per DVC stage) and the modules they share."""

import ctypes
import ctypes.util


def _keep_large_blocks_in_heap() -> None:
    # On the CPU, PyTorch takes tensor memory from the C allocator. glibc hands every block over
    # 32 MB straight from the kernel and returns it on free, so each large activation (a 500-image
    # probe batch, an evaluation batch) is page-faulted and zeroed afresh: measured 2x the wall
    # time of the gradients stage. Keeping such blocks in the heap for reuse costs nothing else.
    # Same as MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_; does nothing off glibc (musl, macOS, Windows).
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 1 << 30)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)  # and do not hand the heap's free top back either


_keep_large_blocks_in_heap()
