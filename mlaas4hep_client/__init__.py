"""``mlaas4hep-client``: the command-line client of the MLaaS4HEP server and TFaaS (tokens, uploads, jobs).

It imports nothing from the services: it talks to them over HTTP only, so it installs on a laptop alone.
"""
