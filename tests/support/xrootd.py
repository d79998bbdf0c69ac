"""The XRootD site of ``mlaas4hep_devtools`` run with this checkout's ``xrootd_proxy`` role."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from mlaas4hep_devtools import xrootd
from mlaas4hep_devtools.xrootd import XRootDSite

ROLE = Path(__file__).resolve().parents[2] / "roles" / "xrootd_proxy"

__all__ = ["ROLE", "XRootDSite", "render_proxy_config", "xrootd_site"]


def render_proxy_config(**overrides: object) -> str:
    return xrootd.render_proxy_config(ROLE, **overrides)


@contextlib.contextmanager
def xrootd_site(base: Path | None = None) -> Iterator[XRootDSite]:
    with xrootd.xrootd_site(ROLE, base) as site:
        yield site
