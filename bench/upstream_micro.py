"""Micro-benchmark of sidecar.upstream.UpstreamPool against a local aiohttp server.

The server (aiohttp's low-level ``web.Server``) runs in a child process so client and
server do not share a core; the client runs N sequential requests, then N requests
spread over C concurrent workers, and prints requests per second. ``--client aiohttp``
runs the same loads through ``aiohttp.ClientSession`` for comparison.

    .venv/bin/python bench/upstream_micro.py -n 20000 -c 32 --size 64 --loop uvloop
    py-spy record -o pool.svg -- .venv/bin/python bench/upstream_micro.py --client-only ...
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import time
from collections.abc import Awaitable, Callable

from aiohttp import ClientSession, TCPConnector, web

from sidecar.core.addresses import UpstreamAddress
from sidecar.dataplane.pool import UpstreamPool


def serve(port: int, size: int, loop_name: str, ready: multiprocessing.synchronize.Event) -> None:
    body = b"x" * size

    async def handler(request: web.BaseRequest) -> web.Response:
        if request.can_read_body:
            await request.read()
        return web.Response(body=body)

    async def main() -> None:
        server = web.Server(handler)
        runner = web.ServerRunner(server, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        ready.set()
        await asyncio.Event().wait()

    run(main(), loop_name)


def run(coro: Awaitable[None], loop_name: str) -> None:
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    else:
        asyncio.run(coro)  # type: ignore[arg-type]


async def measure(label: str, n: int, concurrency: int,
                  one: Callable[[], Awaitable[int]]) -> None:
    for _ in range(min(200, n)):  # warm up: connections, caches
        await one()
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started  # the client's own cost, server excluded
    print(f"{label:<28} c={concurrency:<4} {n / elapsed:>10,.0f} req/s  "
          f"client CPU {cpu * 1e6 / n:5.1f} us/req ({cpu / elapsed:4.0%} of a core)")


async def bench_pool(port: int, args: argparse.Namespace) -> None:
    pool = UpstreamPool(UpstreamAddress("http", "127.0.0.1", port), connect_timeout=5.0,
                        max_idle=max(64, args.concurrency))
    head = f"GET /x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    async def one() -> int:
        resp = await pool.request(head)
        if resp.complete:
            body = resp.body()
        else:
            parts = []
            while chunk := await resp.read():
                parts.append(chunk)
            body = b"".join(parts)
        resp.release()
        return len(body)

    assert await one() == args.size
    await measure("UpstreamPool sequential", args.n, 1, one)
    await measure("UpstreamPool concurrent", args.n, args.concurrency, one)
    pool.close()


async def bench_aiohttp(port: int, args: argparse.Namespace) -> None:
    url = f"http://127.0.0.1:{port}/x"
    async with ClientSession(connector=TCPConnector(limit=0), auto_decompress=False) as session:

        async def one() -> int:
            async with session.get(url) as resp:
                return len(await resp.read())

        assert await one() == args.size
        await measure("aiohttp.ClientSession seq", args.n, 1, one)
        await measure("aiohttp.ClientSession conc", args.n, args.concurrency, one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="requests per measurement")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="response body bytes")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--client", choices=["pool", "aiohttp", "both"], default="both")
    args = parser.parse_args()

    with socket.socket() as sock:  # pick a free port for the child
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=serve, args=(port, args.size, args.loop, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise SystemExit("server did not start")

        async def client() -> None:
            if args.client in ("pool", "both"):
                await bench_pool(port, args)
            if args.client in ("aiohttp", "both"):
                await bench_aiohttp(port, args)

        run(client(), args.loop)
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
