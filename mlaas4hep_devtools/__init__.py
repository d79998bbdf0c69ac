"""Helpers for the tests, the demo and the benchmarks: real servers on loopback, and a real XRootD site.

Installed with the appliance (pyproject.toml) so that ``scripts/demo.py`` and ``bench/`` import it like any
package, without ``sys.path`` edits. It imports nothing from ``appliance``, ``tfaas`` or ``servicecore``.
"""
