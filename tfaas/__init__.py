"""TFaaS: TensorFlow as a Service in pure Python (Flask on gunicorn), compatible with the Go original."""

import appliance  # noqa: F401 - loads the XRootD bindings before TensorFlow; the other order crashes (see there)
