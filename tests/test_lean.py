"""Tests for the daemon's footprint measures (``lean``)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import pytest

from cco_cost_monitor import lean


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_the_serving_process_never_imports_rich_or_the_httpx_command_line() -> None:
    """With the skip in place, the daemon's modules load without rich, click's helpers stay out
    of httpx, and a logged traceback still renders (plainly) in both log formats."""
    result = run_python(
        """
        import io, sys
        import cco_cost_monitor.cli
        # start() skips them before its own imports: nothing may have pulled these in yet.
        assert "structlog" not in sys.modules and "httpx" not in sys.modules, "imported early"
        from cco_cost_monitor import lean
        lean.skip_unused_optional_imports()
        import cco_cost_monitor.server, cco_cost_monitor.persistence, cco_cost_monitor.extensions
        import httpx, structlog
        from cco_cost_monitor.logs import configure_logging, get_logger
        for log_format in ("json", "console"):
            out = io.StringIO()
            configure_logging("info", log_format, stream=out)
            try:
                raise ValueError("boom")
            except ValueError as exc:
                get_logger("t").error("failed", exc_info=exc)
            assert "ValueError" in out.getvalue() and "boom" in out.getvalue(), out.getvalue()
        leaked = sorted(
            name
            for name, module in sys.modules.items()
            if module is not None and name.split(".")[0] in ("rich", "pygments")
        )
        assert not leaked, leaked
        assert "httpx._main" in sys.modules and sys.modules["httpx._main"] is None
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_modules_already_imported_are_left_alone() -> None:
    """Skipping only blocks imports still to come: a loaded rich keeps working."""
    result = run_python(
        """
        import sys, rich
        from cco_cost_monitor import lean
        lean.skip_unused_optional_imports()
        assert sys.modules["rich"] is rich
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr


def test_freezing_moves_surviving_objects_out_of_collections() -> None:
    """After freeze_startup_objects every tracked object is in the permanent generation."""
    try:
        lean.freeze_startup_objects()
        assert gc.get_freeze_count() > 0
        assert gc.get_count()[0] < 50
    finally:
        gc.unfreeze()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_free_memory_is_released_on_glibc() -> None:
    """On Linux with glibc (CI) malloc_trim is found and called."""
    result = run_python(
        """
        import platform
        from cco_cost_monitor import lean
        print(platform.libc_ver()[0], lean.release_free_memory())
        """
    )
    assert result.returncode == 0, result.stderr
    libc, released = result.stdout.split()
    assert libc == "glibc"
    assert released == "True"
