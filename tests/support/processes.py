"""The tests' names for the loopback server helpers, which live in the installed ``mlaas4hep_devtools``."""

from mlaas4hep_devtools.processes import free_port, running, stop, wait_for_port

__all__ = ["free_port", "running", "stop", "wait_for_port"]
