"""One bounded, seeded schemathesis run against a service's own OpenAPI document, as its CLI runs it.

Both services' conformance tests (tests/server, tests/tfaas) call this with their URL, their document and
their parameter dictionaries; the checks, the seed and the worker count are the same for both.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
SEED = 14
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def run_schemathesis(
    url: str, document: bytes, config: str, workdir: Path, max_examples: int, token: str | None
) -> subprocess.CompletedProcess[str]:
    """Fuzz ``url`` with the operations of ``document`` (JSON bytes), ``config`` as schemathesis.toml."""
    schema = workdir / "openapi.json"
    schema.write_bytes(document)
    config_file = workdir / "schemathesis.toml"
    config_file.write_text(config)
    argv = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config_file),
        "run",
        str(schema),
        "--url",
        url,
        "--checks",
        CHECKS,
        "--max-examples",
        str(max_examples),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        # One worker: with two, Hypothesis's threads crash in CPython 3.11's ast.parse ("AST constructor
        # recursion depth mismatch"), a runtime error of the tool, not a finding.
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "--no-color",
    ]
    if token is not None:
        argv += ["--header", f"Authorization: Bearer {token}"]
    return subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=600, check=False)
