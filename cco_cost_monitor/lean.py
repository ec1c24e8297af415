"""The daemon's own footprint: imports it never uses, collector work, memory given back.

Three measures, each measured in ``bench/`` (figures in bench/README.md):

- :func:`skip_unused_optional_imports`: httpx imports its command line (click, rich,
  pygments) and structlog its rich tracebacks whenever rich is installed, which it is for
  ``watch`` and ``status``. The daemon uses neither (its tracebacks are plain, without
  locals), and leaving them out saves ~3.4 MiB of RSS. Call it first thing in the process
  that will serve, before httpx or structlog are imported; code that runs in that process
  must not import rich (the views live in ``render``, used by the CLI and the demo only).
- :func:`freeze_startup_objects`: what exists once the daemon serves (modules, restored
  state) lives as long as the process; ``gc.freeze`` keeps full collections from walking
  it again and again under load.
- :func:`release_free_memory`: glibc keeps freed heap pages after a burst (a flood, a big
  commit); ``malloc_trim(0)`` hands them back to the OS. A no-op where there is no glibc.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Callable
from functools import cache

__all__ = ["freeze_startup_objects", "release_free_memory", "skip_unused_optional_imports"]

#: Optional imports of our dependencies that the daemon process never needs.
UNUSED_IN_DAEMON = ("httpx._main", "rich")


def skip_unused_optional_imports() -> None:
    """Make the optional imports in :data:`UNUSED_IN_DAEMON` fail as if not installed.

    Both libraries guard them with ``try: import ... except ImportError``; a ``None`` in
    ``sys.modules`` is how Python spells "not importable". Modules already imported stay.
    """
    for name in UNUSED_IN_DAEMON:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def freeze_startup_objects() -> None:
    """Collect once, then move every surviving object out of the collector's way."""
    gc.collect()
    gc.freeze()


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    # The symbols already loaded into this process (find_library would run ldconfig).
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    function: Callable[[int], int] = trim
    return function


def release_free_memory() -> bool:
    """Return free heap pages to the OS; ``False`` where that is not possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
