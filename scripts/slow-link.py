#!/usr/bin/env python3
"""A TCP proxy that makes a loopback object store look like one across a network, for
measuring what round trips and bandwidth cost (restore, verify --data):

    scripts/slow-link.py LISTEN_PORT TARGET_PORT RTT_MS MBYTES_PER_S

Each request waits RTT_MS before it reaches the server (a request is data from the
client that begins with an HTTP method), and each connection's responses flow at most
MBYTES_PER_S. Point a target's `endpoint` at http://127.0.0.1:LISTEN_PORT. Standard
library only; stop it with Ctrl-C."""
import asyncio
import sys


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    listen, target = int(sys.argv[1]), int(sys.argv[2])
    rtt, rate = float(sys.argv[3]) / 1000, float(sys.argv[4]) * 1e6

    methods = (b"GET ", b"PUT ", b"HEAD ", b"POST ", b"DELETE ")

    async def up(reader, writer):
        while data := await reader.read(65536):
            if data.startswith(methods):
                await asyncio.sleep(rtt)
            writer.write(data)
            await writer.drain()
        writer.close()

    async def down(reader, writer):
        while data := await reader.read(262144):
            writer.write(data)
            await writer.drain()
            await asyncio.sleep(len(data) / rate)
        writer.close()

    async def handle(client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(
            up(client_reader, server_writer),
            down(server_reader, client_writer),
            return_exceptions=True,
        )

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", listen)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
