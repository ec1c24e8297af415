"""cco-monitor: an exactly-once cost monitor daemon for the CCO LLM proxy.

The package is organised one module per concept. Pure logic (no I/O):

- ``wire``        -- parsing of every frame format the proxy sends
- ``pricing``     -- price tables, model-name normalisation, tiers
- ``facts``       -- what accounting produces (accounted events, unattributed remainders)
- ``reconciler``  -- one per source: each frame to its format's strategy (``formats``)
- ``formats``     -- the registry of wire formats and their exactly-once strategies
- ``ring``, ``settlement`` -- window overlap and twins; counters settled against events
- ``engine``      -- bounded in-memory aggregates, buckets, burn rates, periods

I/O at the edges: ``source`` (SSE client), ``store`` (SQLite), ``api`` and ``metrics``
(health, metrics, JSON API), ``server`` (service lifecycle), ``daemon`` (PID lock, background
mode, sd_notify), ``simulator`` (a stand-in CCO proxy) and ``cli``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
