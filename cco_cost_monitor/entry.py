"""The ``cco-monitor`` console script: ``statusline`` without click, the rest through the CLI.

A status bar runs ``cco-monitor statusline`` every few seconds: importing click and the CLI
for it cost ~100 ms of CPU per call. This module imports only ``sys`` before it knows which
command runs; ``statusline`` then needs nothing but :mod:`cco_cost_monitor.client`
(``statusline --help`` still goes through click, for the full help text).
"""

from __future__ import annotations

import sys

__all__ = ["run"]


def run() -> None:
    """Dispatch: the fast status line, else :func:`cco_cost_monitor.cli.run`."""
    argv = sys.argv[1:]
    if argv[:1] == ["statusline"] and "-h" not in argv and "--help" not in argv:
        from cco_cost_monitor.client import statusline_main  # noqa: PLC0415

        sys.exit(statusline_main(argv[1:]))
    from cco_cost_monitor.cli import run as cli_run  # noqa: PLC0415

    cli_run()
