"""fedbench: a benchmark runner for communication-efficient federated optimisation."""

import os as _os

__version__ = "0.1.0"

# Idle OpenMP threads sleep instead of spinning (torch's default spins ~300k iterations per
# wait): on a machine shared with other processes a spinning thread takes the core the
# thread it waits for needs. Read by OpenMP when torch loads, so it is set here, before any
# fedbench module imports torch; a value the user set (or GOMP_SPINCOUNT / KMP_BLOCKTIME) wins.
if not any(v in _os.environ for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")):
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
