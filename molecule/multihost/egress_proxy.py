"""The multi-host scenario's only way out: an HTTP proxy on the private bridge, for apt and pip in the hosts.

    python3 egress_proxy.py ADDRESS PORT

CONNECT tunnels (https) and absolute-URI requests (plain http apt mirrors) to any port 80 or 443 outside
the bridge's network, so that the hosts need no NAT or route on this machine; nothing else is relayed.
Standard library only: it runs with this machine's python3 before any virtual environment exists.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from urllib.parse import urlsplit

ALLOWED_PORTS = {80, 443}
PRIVATE = ipaddress.ip_network("10.231.7.0/24")


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def allowed(host: str, port: int) -> bool:
    if port not in ALLOWED_PORTS:
        return False
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except OSError:
        return False
    return not any(ipaddress.ip_address(address.split("%")[0]) in PRIVATE for address in addresses)


async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    try:
        head = await client_reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        client_writer.close()
        return
    request_line, _, rest = head.partition(b"\r\n")
    try:
        method, target, version = request_line.decode("latin-1").split(" ", 2)
    except ValueError:
        client_writer.close()
        return
    if method == "CONNECT":
        host, _, port_text = target.rpartition(":")
        port = int(port_text) if port_text.isdigit() else 0
        path_head = b""
    else:
        url = urlsplit(target)
        host, port = url.hostname or "", url.port or 80
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        path_head = f"{method} {path} {version}\r\n".encode("latin-1") + rest
    if not allowed(host.strip("[]"), port):
        client_writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await client_writer.drain()
        client_writer.close()
        return
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(host.strip("[]"), port)
    except OSError:
        client_writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await client_writer.drain()
        client_writer.close()
        return
    if method == "CONNECT":
        client_writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await client_writer.drain()
    else:
        upstream_writer.write(path_head)
        await upstream_writer.drain()
    await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))


async def main(address: str, port: int) -> None:
    server = await asyncio.start_server(handle, address, port, limit=1 << 20)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
