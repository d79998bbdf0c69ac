"""The job's network: a network namespace of its own, where only the allowed endpoints answer.

A job that reads ``root://`` data needs the XRootD proxy and nothing else. A root worker starts each job in a
fresh network namespace that has only a loopback interface; for each allowed endpoint (``job_network_allow``,
e.g. ``127.0.0.1:1094``) the worker listens on the same address and port *inside* the namespace and relays
every connection to the real endpoint outside. Any other address or port is unreachable from the job
(connection refused, or no route): the API, the IdP, TFaaS, other hosts.

The namespace is made by a short-lived thread of the worker that calls ``unshare(CLONE_NEWNET)``: a network
namespace belongs to the thread, so the worker's other threads stay outside, and the job, started from that
thread, inherits it. The relays run in threads started from the worker's own namespace, so their outgoing
connections leave from the real one. With ``job_network: host`` (or a worker that is not root) the job
shares the host's network.

A task of a multi-worker job is also *reached*: its peers connect to the port its worker reserved on
``worker_address`` (``inbound``), and each such connection is relayed into the namespace, to the same port on
the namespace's loopback, where the task's TensorFlow server listens (it binds every address). The inner
socket is made by a thread that entered the namespace (``setns`` on the namespace thread's
``/proc/thread-self/ns/net``), since a socket belongs to the namespace it was created in.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from servicecore.errors import BadInputError

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
MAX_CONNECTIONS = 64  # per job: the XRootD client opens a few
RELAY_CHUNK = 1 << 16
ACCEPT_POLL_S = 0.5


@dataclass(frozen=True)
class Endpoint:
    address: str  # an IP address
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.address else socket.AF_INET


def parse_endpoints(text: str, setting: str = "job_network_allow") -> list[Endpoint]:
    """``"127.0.0.1:1094, [::1]:1094, localhost:8443"``; ``localhost`` means both loopback addresses."""
    endpoints: list[Endpoint] = []
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        host, _, port_text = item.rpartition(":")
        host = host.strip("[]")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536 or not host:
            raise BadInputError(f"setting {setting}: {item!r} is not ADDRESS:PORT")
        port = int(port_text)
        if host == "localhost":
            endpoints += [Endpoint("127.0.0.1", port), Endpoint("::1", port)]
            continue
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise BadInputError(
                f"setting {setting}: {host!r} is not an IP address (names cannot be resolved in "
                "the job's namespace)"
            ) from None
        endpoints.append(Endpoint(str(address), port))
    return endpoints


def parse_port_range(text: str, setting: str) -> range | None:
    """``"29200-29299"`` (or one port); empty means any free port (None)."""
    if not text.strip():
        return None
    first, _, last = text.strip().partition("-")
    try:
        ports = range(int(first), int(last or first) + 1)
    except ValueError:
        raise BadInputError(f"setting {setting}: {text!r} is not FIRST-LAST") from None
    if not ports or ports[0] < 1 or ports[-1] > 65535:
        raise BadInputError(f"setting {setting}: {text!r} is not a range of ports within 1-65535")
    return ports


def listen_for_peers(host: str, ports: range | None) -> socket.socket:
    """A listening socket on ``host`` at the first free port of ``ports`` (any free port when None): where a
    multi-worker job's task is reached by the others. The range is what a worker VM's firewall opens to the
    other workers (``task_ports``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in ports if ports is not None else (0,):
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, port))
        except OSError as err:
            listener.close()
            if err.errno == errno.EADDRINUSE and ports is not None:
                continue
            raise
        listener.listen(16)
        return listener
    raise BadInputError(f"every port of task_ports ({ports[0]}-{ports[-1]}) is in use on {host}")


def scheduler_endpoints(address: str) -> list[Endpoint]:
    """The Dask scheduler of ``dask_scheduler`` (``tcp://ADDRESS:PORT``) as endpoints a predict job reaches:
    none for "" (a local cluster in the job). The job's Dask client talks to the scheduler only
    (``appliance.inference.predict``: no direct connection to the workers), so its address is all to relay."""
    if not address:
        return []
    if not address.startswith("tcp://") or address.count(",") or "/" in address[len("tcp://") :]:
        raise BadInputError(f"setting dask_scheduler: {address!r} is not tcp://ADDRESS:PORT")
    return parse_endpoints(address[len("tcp://") :], "dask_scheduler")


def _network_call(call: str, *args: int) -> None:
    """``unshare`` or ``setns`` of this thread's network namespace, from libc (Python has neither for a
    thread); OSError with the call and errno when it fails."""
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, call)(*args, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{call}(CLONE_NEWNET) failed: {os.strerror(errno)}")


def _unshare_network() -> None:
    _network_call("unshare")


def _enter_network(namespace_fd: int) -> None:
    _network_call("setns", namespace_fd)


def _add_to_loopback(endpoint: Endpoint) -> None:
    """Put a non-loopback address on the namespace's loopback, so that the job reaches it there."""
    if ipaddress.ip_address(endpoint.address).is_loopback:
        return
    prefix = 128 if endpoint.family == socket.AF_INET6 else 32
    subprocess.run(  # in this thread's namespace: the job's
        ["ip", "address", "add", f"{endpoint.address}/{prefix}", "dev", "lo"],
        check=False,
        capture_output=True,
    )


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


def _listen(endpoint: Endpoint) -> socket.socket | None:
    _add_to_loopback(endpoint)  # the address must exist in the namespace for the job to reach it
    sock = socket.socket(endpoint.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((endpoint.address, endpoint.port))
        sock.listen(16)
        sock.settimeout(ACCEPT_POLL_S)
    except OSError as err:
        sock.close()
        if endpoint.family == socket.AF_INET6:  # no IPv6 in this kernel: the IPv4 relay is enough
            log.debug("no relay for %s: %s", endpoint, err)
            return None
        raise
    return sock


class JobNetwork:
    """One job's namespace and its relays; ``start`` runs the job inside, ``close`` ends the relays."""

    def __init__(
        self, allowed: list[Endpoint], inbound: tuple[Endpoint, socket.socket | None] | None = None
    ) -> None:
        """``inbound``: this job's own endpoint and the listening socket outside that reaches it."""
        self.allowed = allowed
        self.inbound = inbound
        self._namespace_fd: int | None = None
        self._listeners: list[tuple[Endpoint, socket.socket]] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self, launch: Callable[[], subprocess.Popen]) -> subprocess.Popen:
        """Make the namespace and its listeners in a fresh thread, and call ``launch`` there.

        That thread lives until ``close``: the job's parent-death signal (``setpriv --pdeathsig``) fires
        when the *thread* that started it ends, not the worker process.
        """
        outcome: dict[str, object] = {}
        started = threading.Event()

        def inside() -> None:
            try:
                _unshare_network()
                _loopback_up()
                if self.inbound is not None:
                    self._namespace_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
                    _add_to_loopback(self.inbound[0])  # the job may reach itself at its own address
                for endpoint in self.allowed:
                    listener = _listen(endpoint)
                    if listener is not None:
                        self._listeners.append((endpoint, listener))
                outcome["process"] = launch()
            except BaseException as err:  # handed to the caller's thread
                outcome["error"] = err
            started.set()
            self._stopping.wait()

        threading.Thread(target=inside, name="job-namespace", daemon=True).start()
        started.wait()
        if "error" in outcome:
            self.close()
            raise outcome["error"]  # type: ignore[misc]
        # Started from this (the worker's) namespace: the relays connect out from the real network.
        for endpoint, listener in self._listeners:
            threading.Thread(target=self._accept, args=(endpoint, listener), daemon=True).start()
        if self.inbound is not None and self.inbound[1] is not None:
            own, outside = self.inbound
            outside.settimeout(ACCEPT_POLL_S)
            inner = Endpoint("::1" if own.family == socket.AF_INET6 else "127.0.0.1", own.port)
            threading.Thread(target=self._accept, args=(inner, outside, True), daemon=True).start()
        return outcome["process"]  # type: ignore[return-value]

    def close(self) -> None:
        self._stopping.set()
        if self._namespace_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._namespace_fd)
            self._namespace_fd = None
        for _, listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.close()
            self._connections.clear()

    def _accept(self, endpoint: Endpoint, listener: socket.socket, into_namespace: bool = False) -> None:
        """Relay each connection to ``listener`` to ``endpoint``: outside, or inside the job's namespace."""
        while not self._stopping.is_set():
            try:
                inner, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            inner.settimeout(None)
            with self._lock:
                crowded = len(self._connections) >= 2 * MAX_CONNECTIONS
            if crowded:
                inner.close()
                continue
            threading.Thread(target=self._relay, args=(endpoint, inner, into_namespace), daemon=True).start()

    def _relay(self, endpoint: Endpoint, inner: socket.socket, into_namespace: bool = False) -> None:
        try:
            if into_namespace:
                # This thread enters the job's namespace for good: it only serves this one connection.
                if self._namespace_fd is None:
                    raise OSError("the job's namespace is gone")
                _enter_network(self._namespace_fd)
            outer = socket.create_connection((endpoint.address, endpoint.port), timeout=10)
        except OSError:
            inner.close()
            return
        outer.settimeout(None)
        with self._lock:
            if self._stopping.is_set():
                inner.close()
                outer.close()
                return
            self._connections.update((inner, outer))
        back = threading.Thread(target=_pump, args=(outer, inner), daemon=True)
        back.start()
        _pump(inner, outer)
        back.join()
        with self._lock:
            self._connections.discard(inner)
            self._connections.discard(outer)
        for sock in (inner, outer):
            with contextlib.suppress(OSError):
                sock.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Copy bytes one way until end of stream, then pass the end on."""
    with contextlib.suppress(OSError):
        while chunk := source.recv(RELAY_CHUNK):
            target.sendall(chunk)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)
