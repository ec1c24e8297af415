"""Every setting of the simulator and its default, in one frozen dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from cco_cost_monitor.errors import ConfigError
from cco_cost_monitor.simulator.faults import ScheduledFault
from cco_cost_monitor.simulator.traffic import TrafficProfile, WireFormat

__all__ = ["SimulatorSettings"]


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    """How the stand-in proxy behaves. Times are in seconds.

    ``port=0`` binds an ephemeral port (read it back from :attr:`Simulator.port`); a
    restart rebinds the same port.
    """

    host: str = "127.0.0.1"
    port: int = 3000
    interval: float = 5.0
    keepalive: float = 30.0
    ping_interval: float = 15.0
    seed: int | None = None
    traffic: TrafficProfile = field(default_factory=TrafficProfile)
    format: WireFormat = "current"
    spaced: bool = False
    save_interval: float = 60.0
    down_seconds: float = 0.2
    faults: tuple[ScheduledFault, ...] = ()
    flood: bool = False
    ledger_path: Path | None = None
    # The proxy was already running with this history when the simulator starts.
    start_uptime: int = 0
    history_cost: float = 0.0
    history_calls: int = 0

    def __post_init__(self) -> None:
        for name in ("interval", "keepalive", "ping_interval", "save_interval"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        if not (math.isfinite(self.down_seconds) and self.down_seconds >= 0):
            raise ConfigError(f"down_seconds must be >= 0, not {self.down_seconds!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, not {self.port}")
        if self.format not in ("current", "early", "old"):
            raise ConfigError(f"format must be current, early or old, not {self.format!r}")
        if self.start_uptime < 0 or self.history_calls < 0 or self.history_cost < 0:
            raise ConfigError("start_uptime, history_cost and history_calls must be >= 0")
