"""fedbench: a benchmark runner for communication-efficient federated optimisation."""

__version__ = "0.1.0"
