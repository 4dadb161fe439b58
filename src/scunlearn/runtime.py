"""Process set-up for a job: the device, seeds and deterministic kernels, thread count, memory allocator.

Torch is imported by the functions that need it: the data and report stages call
:func:`tune_allocator` in environments without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from scunlearn import ScunlearnError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` = CUDA if available, else CPU; otherwise the named device, which must be present."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ScunlearnError(f"config device: '{spec}' asked for, but this machine has no usable CUDA GPU "
                                 f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                                 "use device: auto (falls back to CPU) or device: cpu")
        if dev.index is not None and dev.index >= n:
            raise ScunlearnError(f"config device: '{spec}' asked for, but only {n} CUDA GPU(s) found "
                                 f"(cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ScunlearnError(f"config device: '{spec}' asked for, but MPS is not available on this machine; "
                             "use device: auto or device: cpu")
    return dev


def _deterministic_kernels() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without importing the compiler,
    and without its NaN fill of every new tensor.

    The public call also imports ``torch._inductor`` (and ``torch._dynamo``: ~1 s of CPU in
    every job process) only to set the compiler's own flag; nothing here is compiled, so the
    kernels' flag is set directly, and the compiler's too if something imported it already.
    Deterministic mode also fills each uninitialized allocation (``torch.empty``, every
    kernel's output) with NaN, a debugging aid that makes a read of garbage visible: on CPU
    that is an extra pass over ~170 tensors per training step (3-5% of a step). No kernel we
    run reads memory it did not write, so the fill is switched off; the tests' same-seed,
    same-output checks would catch one that did.
    """
    import sys

    import torch

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # a torch without the private setter: the public call
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)
        inductor = sys.modules.get("torch._inductor.config")
        if inductor is not None:
            inductor.deterministic = True
    no_fill = getattr(torch._C, "_set_deterministic_fill_uninitialized_memory", None)
    if no_fill is not None:
        no_fill(False)


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed torch's RNGs, make CPU kernels deterministic, set the thread count."""
    import torch

    torch.manual_seed(seed)
    _deterministic_kernels()
    if threads:
        torch.set_num_threads(int(threads))


#: glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator() -> bool:
    """Keep freed memory in the process (glibc malloc): a training step's temporaries are reused, not re-faulted.

    A training batch allocates a few dozen cells × genes temporaries (4 MB each at batch
    512 × 2,000 genes). glibc serves blocks that large with fresh mmaps and returns
    them on free, so every batch page-faults its temporaries in again (the first write to a
    fresh 4 MB block cost up to 30 ms). Serving them from the heap (mmap threshold
    32 MB, the most glibc allows) and trimming the heap only above 512 MB is 5-10% more
    cells/s on CPU (``bench/train_throughput.py``). The process's peak memory is unchanged;
    it only keeps what it already used. Linux/glibc only; elsewhere a no-op returning False.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    ok &= mallopt(_M_TRIM_THRESHOLD, 512 * 1024 * 1024)
    ok &= mallopt(_M_TOP_PAD, 64 * 1024 * 1024)
    return bool(ok)
