"""Real XRootD servers on loopback: an origin serving a directory, and the appliance's proxy in front of it.

The proxy's configuration is rendered from the Ansible role's own template (``roles/xrootd_proxy`` of the
checkout, which the caller names), so the tests and the demo exercise the configuration that the appliance
ships.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml

from mlaas4hep_devtools.processes import free_port, running


def render_proxy_config(role_dir: Path, **overrides: object) -> str:
    """The proxy configuration of the ``xrootd_proxy`` role at ``role_dir``: its defaults, then overrides."""
    variables = yaml.safe_load((role_dir / "defaults" / "main.yml").read_text())
    variables.update(overrides)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(role_dir / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template("xrootd-proxy.cfg.j2").render(**variables)


def _xrootd_argv(config: Path) -> list[str]:
    binary = shutil.which("xrootd")
    if binary is None:
        raise RuntimeError("xrootd is not installed: run scripts/bootstrap.sh (Debian package xrootd-server)")
    # No -l: the log goes to stderr, which the harness captures (xrootd opens -l files after dropping root).
    argv = [binary, "-c", str(config)]
    # xrootd refuses to run as root; the Debian package creates the xrootd user.
    if os.geteuid() == 0:
        argv += ["-R", "xrootd"]
    return argv


@dataclass
class XRootDSite:
    data_dir: Path
    origin_port: int
    proxy_port: int
    forwarding_port: int
    work_dir: Path

    def origin_url(self, name: str) -> str:
        return f"root://127.0.0.1:{self.origin_port}//{name}"

    def proxy_url(self, name: str) -> str:
        return f"root://127.0.0.1:{self.proxy_port}//{name}"

    def forwarding_url(self, name: str) -> str:
        return f"root://127.0.0.1:{self.forwarding_port}//{self.origin_url(name)}"

    def add_file(self, source: Path, name: str | None = None) -> str:
        """Copy a file into the origin and return its name there."""
        name = name or source.name
        target = self.data_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(0o644)
        return name


@contextlib.contextmanager
def xrootd_site(role_dir: Path, base: Path | None = None) -> Iterator[XRootDSite]:
    """An origin, a direct proxy and a forwarding proxy, all on loopback, stopped when the block ends.

    The proxies run the configuration of the ``xrootd_proxy`` role at ``role_dir``.
    """
    # pytest's temporary directories are private to root; xrootd runs as its own user and must read here.
    work = Path(tempfile.mkdtemp(prefix="mlaas4hep-xrootd-", dir=base))
    work.chmod(0o755)
    data = work / "data"
    data.mkdir(mode=0o755)
    ports = {"origin": free_port(), "proxy": free_port(), "forwarding": free_port()}
    configs = {
        "origin": (
            f"xrd.port {ports['origin']}\nall.export /\noss.localroot {data}\n"
            f"all.adminpath {work}/adm-origin\nall.pidpath {work}/adm-origin\n"
        ),
        "proxy": render_proxy_config(
            role_dir,
            xrootd_proxy_port=ports["proxy"],
            xrootd_proxy_mode="direct",
            xrootd_proxy_origin=f"127.0.0.1:{ports['origin']}",
            xrootd_proxy_admin_path=f"{work}/adm-proxy",
        ),
        "forwarding": render_proxy_config(
            role_dir,
            xrootd_proxy_port=ports["forwarding"],
            xrootd_proxy_mode="forwarding",
            xrootd_proxy_admin_path=f"{work}/adm-forwarding",
        ),
    }
    for name, text in configs.items():
        adm = work / f"adm-{name}"
        adm.mkdir(mode=0o777)
        adm.chmod(0o777)
        (work / f"{name}.cfg").write_text(text)
    try:
        with contextlib.ExitStack() as stack:
            for name in ("origin", "proxy", "forwarding"):
                stack.enter_context(
                    running(_xrootd_argv(work / f"{name}.cfg"), ports[name], work / f"{name}.log", timeout=30)
                )
            yield XRootDSite(data, ports["origin"], ports["proxy"], ports["forwarding"], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
