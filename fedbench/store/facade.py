"""`Store`: the result database behind one SQLAlchemy URL, a thin façade over the store's
concerns: opening and transactions (engine.py), schema and migrations (schema.py), leases
(leases.py), run writes (writes.py), reads (reads.py, one set of SQL with the read-only
`SqliteReader`) and frames (frames.py)."""

from __future__ import annotations

from fedbench.store.frames import Frames
from fedbench.store.leases import Leases
from fedbench.store.writes import Writes


class Store(Leases, Writes, Frames):
    """The result database behind one SQLAlchemy URL: open it, write runs under leases, read
    records and frames. Safe to share between threads; open one Store per process (an engine
    must not cross a fork). `url` masks any password, so it is safe to print."""
