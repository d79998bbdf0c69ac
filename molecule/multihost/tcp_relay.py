"""A TCP relay: the test identity provider on the front, at the same loopback URL on every host.

    python3 tcp_relay.py LISTEN_ADDRESS LISTEN_PORT TARGET_ADDRESS TARGET_PORT

The services check that an http:// issuer is on loopback; the issuer of the multi-host scenario runs on the
front's loopback, and this relay gives the worker and the replica the same URL (prepare.yml runs one on each:
front private address -> front loopback; other host's loopback -> front private address).
"""

from __future__ import annotations

import asyncio
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(listen: str, port: int, target: str, target_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(target, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(handle, listen, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
