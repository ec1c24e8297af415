"""Every setting of the simulator and its default, in one frozen dataclass.

The defaults are the real proxy's: 5 s snapshots, 60 s saves, 30 s keep-alive, and its
realistic mode -- snapshots read apart from the records (``race_rate``,
``late_event_rate``), saves that hold snapshots back (``save_hold``), ``-0.0`` on an empty
proxy, axum 0.7's spaced framing, frames split inside UTF-8 characters, and the odd records
of :class:`~cco_cost_monitor.simulator.traffic.TrafficProfile`. :func:`classic` turns all of
that off (the simulator before realistic mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from cco_cost_monitor.errors import ConfigError
from cco_cost_monitor.simulator.faults import ScheduledFault
from cco_cost_monitor.simulator.traffic import TrafficProfile, WireFormat

__all__ = ["SimulatorSettings", "classic"]


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
    # axum 0.7 (what CCO pins) writes "event: analytics" and ": keep-alive".
    spaced: bool = True
    save_interval: float = 60.0
    # Realistic mode. Share of snapshots with new requests that are read while some of them
    # finish (event_ahead / cost_ahead, half each), and of those whose newest event reaches
    # the ring only after the read (event_late). Far more often than on a real proxy, so
    # that a short run shows every interleaving.
    race_rate: float = 0.25
    late_event_rate: float = 0.05
    # Each save holds the records lock this long (0: saves block nothing).
    save_hold: float = 6.0
    negative_zero: bool = True
    split_chunks: bool = True
    down_seconds: float = 0.2
    faults: tuple[ScheduledFault, ...] = ()
    flood: bool = False
    ledger_path: Path | None = None
    # The proxy was already running with this history when the simulator starts.
    start_uptime: int = 0
    history_cost: float = 0.0
    history_calls: int = 0

    def __post_init__(self) -> None:
        for name in ("race_rate", "late_event_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, not {value!r}")
        if not (math.isfinite(self.save_hold) and 0 <= self.save_hold <= 86_400):
            raise ConfigError(f"save_hold must be 0..86400 seconds, not {self.save_hold!r}")
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


def classic(settings: SimulatorSettings | None = None, **changes: object) -> SimulatorSettings:
    """``settings`` (default: the defaults) with every realistic behaviour off, then ``changes``.

    Unspaced framing, atomic snapshots, saves that block nothing, ``0.0`` on an empty proxy,
    one write per frame, and none of the odd records (identical twins, overrides with no
    call, failed calls): the simulator as it was before realistic mode.
    """
    base = settings if settings is not None else SimulatorSettings()
    traffic = replace(base.traffic, identical_rate=0.0, orphan_override_rate=0.0, failed_rate=0.0)
    off = replace(
        base,
        spaced=False,
        race_rate=0.0,
        late_event_rate=0.0,
        save_hold=0.0,
        negative_zero=False,
        split_chunks=False,
        traffic=traffic,
    )
    return replace(off, **changes)  # type: ignore[arg-type]
