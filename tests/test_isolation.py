"""The suite itself: no test sees the developer's own configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_no_developer_setting_reaches_a_test(tmp_path_factory: pytest.TempPathFactory) -> None:
    """HOME is a fresh directory of this session and no CCO_MONITOR_* variable is set."""
    assert not [name for name in os.environ if name.startswith("CCO_MONITOR_")]
    home = Path(os.environ["HOME"])
    assert home.is_relative_to(tmp_path_factory.getbasetemp())
    assert not (home / ".cco-monitor").exists()
