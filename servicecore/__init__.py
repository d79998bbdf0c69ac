"""The small core both services share: settings loading, errors and their one JSON body, auth, the gunicorn
launcher, safe archive extraction, atomic writes, and model names and versions.

It imports nothing from ``appliance`` or ``tfaas``; both import from it (docs/architecture.md).
"""
