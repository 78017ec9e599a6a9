"""Instructions per request: the sidecar's CPU cost, counted instead of timed.

Wall-clock benchmarks on a shared VM drift by +-30 % within minutes, so a change that
saves 2 % cannot be seen with them. This runs the sidecar under valgrind's callgrind,
sends it requests over one keep-alive connection, and divides the user-space
instructions executed during them (every thread of the sidecar, the interpreter and
the C libraries; not the kernel) by their number. The count repeats within about 1 %
from run to run and does not depend on what else the machine does, so A/B runs can
go side by side:

    .venv/bin/python bench/icount.py                    # this checkout, small bodies
    .venv/bin/python bench/icount.py --body 64k -n 1000
    .venv/bin/python bench/icount.py --headers browser  # nine more request fields
    .venv/bin/python bench/icount.py --tree /tmp/other  # another checkout, same venv
    .venv/bin/python bench/icount.py --keep /tmp/cg.out # then: callgrind_annotate /tmp/cg.out

Caveats: instructions are not time (a cache miss or a system call costs more than
its instruction count says), and work driven by the clock (timers, health checks)
is overcounted, since a request under valgrind takes about 50x longer. Use it to
compare two versions of the data path, and `bench/run.sh` to report speed.

Needs valgrind (`apt-get install valgrind`). The upstream is a small asyncio server
in a child process (not counted) answering like nginx does: the same header fields,
a 101-byte or a 64 KiB body.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BODIES = {"small": 101, "64k": 65536}


def _upstream(port: int, ready: multiprocessing.synchronize.Event) -> None:
    """Answer every request like the bench's nginx backend: /64k or a small body."""

    def head(size: int) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n"
                b"Date: Fri, 27 Nov 2026 20:00:00 GMT\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\nLast-Modified: Fri, 27 Nov 2026 19:00:00 GMT\r\n"
                b"Connection: keep-alive\r\nETag: \"6567a2f0-%x\"\r\n"
                b"Accept-Ranges: bytes\r\n\r\n" % (size, size))

    answers = {size: head(size) + b"x" * size for size in BODIES.values()}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                big = request.split(b" ", 2)[1].startswith(b"/64k")
                writer.write(answers[BODIES["64k" if big else "small"]])
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# `--headers browser`: the fields a browser's API call carries (lengths that collide with
# fields the sidecar owns, like User-Agent's with Connection's, included on purpose).
HEADER_PROFILES: dict[str, dict[str, str]] = {
    "minimal": {},  # http.client's own: Host and Accept-Encoding
    "browser": {
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Accept": "application/json, text/plain, */*",
        "Accept-Language": "en-GB,en;q=0.7",
        "Referer": "https://app.example.com/orders/42",
        "Content-Type": "application/json",
        "Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl",
        "Cookie": "session=8f2c1e0a9b7d4c3e; theme=dark",
        "Sec-Fetch-Mode": "cors",
        "Origin": "https://app.example.com",
    },
}


def _requests(port: int, path: str, count: int, timeout: float,
              headers: dict[str, str] | None = None) -> None:
    """`count` requests over one keep-alive connection (http.client reconnects if the
    sidecar closes it); `timeout` bounds each socket operation."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    for _ in range(count):
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"icount: {path} answered {response.status}")
    conn.close()


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit("icount: the sidecar exited during start-up")
        try:
            _requests(port, "/small", 1, 5.0)
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"icount: the sidecar did not answer within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=HERE.parent,
                        help="the checkout to measure (default: this one)")
    parser.add_argument("--body", choices=sorted(BODIES), default="small")
    parser.add_argument("-n", "--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--config", type=Path, help="default: TREE/bench/sidecar.jsonnet")
    parser.add_argument("--headers", choices=sorted(HEADER_PROFILES), default="minimal",
                        help="the request's fields besides Host (default: minimal)")
    parser.add_argument("--keep", type=Path, metavar="FILE",
                        help="also save the callgrind dump of the counted requests there "
                             "(read it with callgrind_annotate)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"icount: {tool} not found (apt-get install valgrind)")
    tree = args.tree.resolve()
    config = args.config or tree / "bench" / "sidecar.jsonnet"

    upstream_port, port = _free_port(), _free_port()
    ready = multiprocessing.Event()
    upstream = multiprocessing.Process(target=_upstream, args=(upstream_port, ready),
                                       daemon=True)
    upstream.start()
    if not ready.wait(10):
        raise SystemExit("icount: the upstream did not start")
    with tempfile.TemporaryDirectory(prefix="icount-") as out:
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p",
             sys.executable, "-m", "sidecar", "run", "--config", str(config),
             "--ext-str", f"upstream=http://127.0.0.1:{upstream_port}",
             "--listen", f"127.0.0.1:{port}", "--admin-grpc", "127.0.0.1:0",
             "--admin-http", "127.0.0.1:0", "--no-watch", "--log-level", "warning"],
            cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_ready(port, proc, 180)
            path = "/64k" if args.body == "64k" else "/small"
            headers = HEADER_PROFILES[args.headers]
            _requests(port, path, args.warmup, 60, headers)
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _requests(port, path, args.requests, 60, headers)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            upstream.terminate()
        for dump in Path(out).glob("cg.*"):
            text = dump.read_text(errors="replace")
            if "Trigger: dump" in text:
                found = re.search(r"^summary:\s+(\d+)", text, re.MULTILINE)
                if found:
                    per_request = int(found.group(1)) / args.requests
                    if args.keep is not None:
                        shutil.copyfile(dump, args.keep)
                    print(f"{tree.name} {args.body} ({args.headers} headers): "
                          f"{per_request:,.0f} instructions/request ({args.requests} requests)")
                    return
    raise SystemExit("icount: callgrind wrote no dump")


if __name__ == "__main__":
    main()
