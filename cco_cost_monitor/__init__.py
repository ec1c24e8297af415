"""cco-monitor: an exactly-once cost monitor daemon for the CCO LLM proxy.

The package is organised one module per concept. Pure logic (no I/O):

- ``wire``        -- parsing of every frame format the proxy sends
- ``pricing``     -- price tables, model-name normalisation, tiers
- ``reconciler``  -- turning repeated snapshots into exactly-once accounted facts
- ``engine``      -- bounded in-memory aggregates, buckets, burn rates, periods

I/O at the edges: ``source`` (SSE client), ``store`` (SQLite), ``http`` (health,
metrics, API), ``server`` (service lifecycle), ``daemon`` (PID lock, background
mode, sd_notify), ``simulator`` (a stand-in CCO proxy) and ``cli``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
