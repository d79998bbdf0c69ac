"""Setuptools hook, beside pyproject.toml (which holds all the metadata): the wheel also carries a ``.pth``.

``packaging/mlaas4hep_tensorflow_local_symbols.pth`` goes to the top of site-packages, where Python reads it
at start-up: it keeps TensorFlow's BoringSSL symbols out of the process-wide namespace so that the XRootD
bindings load in any order (the file says why). A ``.pth`` is the one place that runs before a user's imports.
Editable installs do not carry it (setuptools links packages only), which is one reason scripts/bootstrap.sh
installs the checkout as a wheel; tests/test_import_order.py names a venv that lacks it.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = Path("packaging") / "mlaas4hep_tensorflow_local_symbols.pth"


class BuildPyWithPth(build_py):
    """build_py that also copies the start-up ``.pth`` to the root of the built tree (the wheel's purelib)."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(PTH), str(Path(self.build_lib) / PTH.name), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH.name)]

    def get_output_mapping(self) -> dict[str, str]:
        return {**super().get_output_mapping(), str(Path(self.build_lib) / PTH.name): str(PTH)}


setup(cmdclass={"build_py": BuildPyWithPth})
