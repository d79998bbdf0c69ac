"""The MLaaS4HEP appliance: streaming, training, jobs and the HTTP API (see docs/architecture.md)."""

import contextlib

# The XRootD client bindings crash the process (SIGSEGV) when they are loaded after TensorFlow, which is what
# happens when uproot first opens a root:// URL in a process that already trains or serves a model. Loaded
# first, both work; every entry point imports this package before TensorFlow.
with contextlib.suppress(ImportError):
    import XRootD.client  # noqa: F401
