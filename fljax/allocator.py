"""tcmalloc for CPU runs: restart a command-line program with it preloaded.

A round writes its cohort's updates into a fresh ``[n, d]`` buffer (80 MB for 100 clients of
the MLP, 106 MB for Fang et al.'s CNN). glibc's malloc serves buffers that large with ``mmap``
and unmaps them when they are freed, so every round faults the same memory in again: measured
on a 2-core CPU, ~35,000 page faults and ~60 ms of kernel time per 100-client CNN round. tcmalloc
keeps freed pages for reuse (50 faults a round), and the same rounds run 13-20% faster (MLP
235 -> 207 ms, CNN 265 -> 215 ms; ``python -m experiments.benchmark``). jemalloc, which also
returns freed memory, measured no faster than glibc. The allocator cannot change inside a running
process, so ``restart_with_tcmalloc`` replaces the process with the same command line and
``LD_PRELOAD`` set; fljax's command-line programs call it first (``FLJAX_TCMALLOC=0`` turns it
off). tcmalloc on Debian or Ubuntu: ``apt-get install libtcmalloc-minimal4``.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from typing import Optional

NAMES = ("tcmalloc_minimal", "tcmalloc")
"""Library names searched, in order (gperftools' minimal build first)."""
SWITCH = "FLJAX_TCMALLOC"
"""Environment variable: ``0`` keeps the system's allocator."""
_RESTARTED = "FLJAX_TCMALLOC_RESTARTED"  # set in the restarted process: never restart twice


def tcmalloc_loaded() -> bool:
    """Whether tcmalloc is mapped into this process (read from ``/proc/self/maps``; ``False``
    where that file does not exist)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libtcmalloc" in line for line in maps)
    except OSError:
        return False


def find_tcmalloc() -> Optional[str]:
    """The file name of the system's tcmalloc (``ctypes.util.find_library``), or ``None``."""
    for name in NAMES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def restart_with_tcmalloc() -> None:
    """Replaces this process with the same command line under tcmalloc (``os.execve`` with
    ``LD_PRELOAD``), where the system (Linux) has tcmalloc and it is not loaded yet; does nothing
    where tcmalloc is missing or loaded, off Linux, where ``FLJAX_TCMALLOC=0`` is set, or on a
    second call after the restart. For command-line programs, first thing in ``main`` (nothing printed or written yet:
    the process starts over); not for notebooks or tests."""
    if not sys.platform.startswith("linux"):  # LD_PRELOAD is the Linux loader's
        return
    if os.environ.get(SWITCH) == "0" or os.environ.get(_RESTARTED) or tcmalloc_loaded():
        return
    library = find_tcmalloc()
    if library is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    env[_RESTARTED] = "1"
    # tcmalloc reports every allocation over 1 GiB on stderr by default (a 1,000-client cohort's
    # updates are one): such allocations are expected here.
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
