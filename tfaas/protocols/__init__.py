"""The HTTP protocols of TFaaS, one module each, all over ``tfaas.dataplane.DataPlane``.

``original`` (the Go TFaaS API), ``tfserving`` (TF Serving REST v1), ``kserve`` (KServe v2 / Open Inference
Protocol), ``service`` (status, metrics, OpenAPI); ``common`` holds what their views share.
"""
