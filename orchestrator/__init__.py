"""failoverd: multi-region failover orchestrator."""

__version__ = "0.1.0"
