"""Authenticated calls to the services' HTTP APIs, and rows to predict read from CSV or JSON files."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from mlaas4hep_client.options import ENV_PREFIX, ClientError, HttpError
from mlaas4hep_client.tokens import TokenSource


class Api:
    """Authenticated calls to one service; errors become ``ClientError`` with the service's message."""

    def __init__(self, base: str | None, what: str, tokens: TokenSource) -> None:
        if not base:
            flag = "--server" if what == "server" else "--tfaas"
            raise ClientError(f"say where the {what} is: {flag} URL or ${ENV_PREFIX}{what.upper()}")
        self.base = base.rstrip("/")
        self.tokens = tokens

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.tokens.bearer()}", **kwargs.pop("headers", {})}
        options = self.tokens.options
        try:
            response = requests.request(
                method,
                f"{self.base}{path}",
                headers=headers,
                timeout=options.timeout_s,
                verify=options.verify,
                **kwargs,
            )
        except requests.RequestException as err:
            raise ClientError(f"{method} {self.base}{path} failed: {err}") from None
        if response.status_code >= 400:
            raise HttpError(
                response.status_code, f"{method} {path}: HTTP {response.status_code}: {_error_text(response)}"
            )
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{method} {path}: the answer is not JSON") from None


def _error_text(response: requests.Response) -> str:
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    return response.text[:500] or response.reason


def read_rows(path: Path) -> dict[str, Any]:
    """Rows to predict from a JSON file (a TFaaS/TF Serving request body, or a list of rows) or a CSV file.

    A CSV with a header of branch names becomes raw-branch rows; without a header, normalised vectors.
    """
    try:
        text = path.read_text()
    except OSError as err:
        raise ClientError(f"cannot read {str(path)!r}: {err.strerror}") from None
    if path.suffix.lower() == ".csv":
        rows = [row for row in csv.reader(text.splitlines()) if row]
        if not rows:
            raise ClientError(f"{path} has no rows")
        try:
            if _is_header(rows[0]):
                names = [name.strip() for name in rows[0]]
                return {
                    "instances": [{n: float(v) for n, v in zip(names, row, strict=True)} for row in rows[1:]]
                }
            return {"instances": [[float(v) for v in row] for row in rows]}
        except ValueError as err:
            raise ClientError(
                f"{path}: every row must have the header's width and numbers only ({err})"
            ) from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise ClientError(f"{path} is not valid JSON: {err}") from None
    if isinstance(body, list):
        return {"instances": body}
    if isinstance(body, dict) and "values" in body:  # an original TFaaS /json body: one row
        return {"instances": [body["values"]]}
    if isinstance(body, dict) and ("instances" in body or "inputs" in body):
        return body
    raise ClientError(f"{path}: expected a list of rows, or an object with 'instances', 'inputs' or 'values'")


def _is_header(row: Sequence[str]) -> bool:
    try:
        [float(v) for v in row]
    except ValueError:
        return True
    return False
