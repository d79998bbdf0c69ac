"""The MLaaS4HEP appliance: streaming, training, jobs and the HTTP API (see docs/architecture.md).

No import-order rule: the start-up ``.pth`` that the package installs (packaging/) lets TensorFlow and the
XRootD bindings load in any order, so this package loads neither until a module needs it.
"""
