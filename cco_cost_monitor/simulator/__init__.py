"""``cco-monitor simulate``: a stand-in CCO proxy speaking the exact wire format.

Modules: ``traffic`` (pure: requests, prices, timestamps, framing), ``proxy`` (pure: one
proxy process -- ring, totals, saves, snapshots), ``ledger`` (pure: ground truth),
``faults`` (pure: fault kinds and parsing), ``settings`` (every default), ``streams`` (one
open SSE response: queue, keep-alives, stalls, fault frames), ``server`` (aiohttp server,
tick loop, control endpoints, restarts, entry points) and ``cli`` (the click command).
Import the public names from here.
"""

from cco_cost_monitor.simulator.faults import Fault, ScheduledFault, parse_fault_spec
from cco_cost_monitor.simulator.server import Simulator, run, running, serve
from cco_cost_monitor.simulator.settings import SimulatorSettings, classic
from cco_cost_monitor.simulator.traffic import TrafficProfile

__all__ = [
    "Fault",
    "ScheduledFault",
    "Simulator",
    "SimulatorSettings",
    "TrafficProfile",
    "classic",
    "parse_fault_spec",
    "run",
    "running",
    "serve",
]
