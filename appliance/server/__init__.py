"""The MLaaS4HEP server: settings, the Flask API, the job store, queue and sandboxed runner.

It runs the training layer in subprocesses; nothing below it imports it.
"""
