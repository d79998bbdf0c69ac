"""TFaaS: TensorFlow as a Service in pure Python (Flask on gunicorn), compatible with the Go original."""
