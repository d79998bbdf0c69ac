# Sourced by the scripts (from the checkout's top): VENV, the virtual environment that scripts/bootstrap.sh
# builds outside the clone, so that the unprivileged job user can run it (MLAAS4HEP_VENV overrides it).
VENV=${MLAAS4HEP_VENV:-/opt/mlaas4hep-dev/venv}
[[ $VENV == /* ]] || VENV=$PWD/$VENV
