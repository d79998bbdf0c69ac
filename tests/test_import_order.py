"""Any import order of appliance, tfaas, tensorflow and XRootD works, each order in its own interpreter.

TensorFlow's wheel loads its libraries with RTLD_GLOBAL, publishing its statically linked BoringSSL; the
XRootD bindings loaded after it bound their OpenSSL calls to it and died (SIGSEGV) in their own constructor.
The ``.pth`` that the package installs (packaging/) keeps TensorFlow's symbols local; these tests fail if it
is missing, stops working with a new TensorFlow, or if one of our packages brings the crash back.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = ("appliance", "tfaas", "tensorflow", "XRootD")
# Each import, then one real call into each native library, so that "works" means more than "imported".
USE_THEM = (
    "import XRootD.client, tensorflow as tf\n"
    "assert XRootD.client.URL('root://127.0.0.1:1094//store/a.root').path == '/store/a.root'\n"
    "assert int(tf.reduce_sum(tf.constant([1, 2, 3]))) == 6\n"
    "print('ok')\n"
)


def import_in_order(order: tuple[str, ...]) -> str | None:
    """None when a fresh interpreter imports ``order`` and uses the libraries, else what went wrong."""
    program = "".join(f"import {name}\n" for name in order) + USE_THEM
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode == 0 and result.stdout.strip().endswith("ok"):
        return None
    return f"{' then '.join(order)}: exit {result.returncode}\n{result.stderr[-1500:]}"


@pytest.mark.slow
def test_modules_import_in_any_order() -> None:
    # 24 interpreters, each importing TensorFlow: as many at once as there are cores.
    orders = list(itertools.permutations(MODULES))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        failures = [f for f in pool.map(import_in_order, orders) if f is not None]
    assert not failures, f"{len(failures)} of {len(orders)} orders fail:\n" + "\n".join(failures)


def test_the_interpreter_keeps_tensorflow_symbols_local_from_its_start() -> None:
    # Without the .pth every order starting with tensorflow crashes: name the cause once, cheaply.
    guard = "tensorflow.python.pywrap_dlopen_global_flags"
    probe = f"import sys; print(repr(sys.modules.get({guard!r}, 'absent')))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "None", (
        f"{sys.executable} did not run mlaas4hep_tensorflow_local_symbols.pth at start-up: install the "
        "checkout into its venv (bash scripts/bootstrap.sh)"
    )
