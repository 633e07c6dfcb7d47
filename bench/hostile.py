"""Hostile clients of issue 23 against a server on 127.0.0.1, each bounded in count and time, while
GET / is timed beside them from fresh connections.

    never_read   connections with a 2 KB receive buffer pipelining GET /openapi.json, never reading
    one_byte     a valid POST /is_prime whose chunked body comes in 1-byte chunks
    extensions   1-byte chunks, each with a 1000-byte extension
    near_limit   bodies just under MAX_BODY_BYTES, stalled before their last bytes
    methods      requests with made-up methods, then the size of /metrics
    malformed    the issue's malformed requests, each answered once

`python -m bench.hostile URL` runs the issue's numbers against a deployment and prints what each
got, the workers' CPU and memory around it, and GET /'s answers during it; tests/test_hostile.py
runs smaller ones and asserts on the same figures.
"""
import argparse
import json
import socket
import threading
import time

import requests

from bench.attack import time_gets
from bench.bench import memory_mb
from dev.harness import cpu_seconds

HEAD = b"POST /is_prime HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
# The malformed requests, each a 500 with a traceback or two answers before, and the one
# answer each gets now. Trailer fields are counted on the wire with the body, and dropped.
MALFORMED = {
    "size with spaces": (CHUNKED + b"3   \r\n[7]\r\n0\r\n\r\n", 400),
    "data without CRLF": (CHUNKED + b"3\r\n[7]XY0\r\n\r\n", 400),
    "bad extension": (CHUNKED + b"3;@@\r\n[7]\r\n0\r\n\r\n", 400),
    "trailer without colon": (CHUNKED + b"3\r\n[7]\r\n0\r\nno colon\r\n\r\n", 400),
    "20 KB of trailers": (CHUNKED + b"3\r\n[7]\r\n0\r\nT: " + b"t" * 20000 + b"\r\n\r\n", 200),
    "Content-Length trailer": (CHUNKED + b"3\r\n[7]\r\n0\r\nContent-Length: 9\r\n\r\n", 400),
    "chunked on HTTP/1.2": (CHUNKED.replace(b"HTTP/1.1", b"HTTP/1.2") + b"3\r\n[7]\r\n0\r\n\r\n",
                            505),
    "GET /healthz, bad body": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                               b"\r\n\r\nzz\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "no Host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "HTTP/1.9": (b"GET / HTTP/1.9\r\nHost: x\r\n\r\n", 505),
}


def answers(port, request, timeout_s=10):
    """Send `request` on a fresh connection, half-close, and read until the server closes:
    [(status, body)] of every answer it sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    found = []
    while data.startswith(b"HTTP/1.1 "):
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        found.append((int(head.split(b" ")[1]), rest[:length]))
        data = rest[length:]
    assert not data, data[:200]  # nothing that is not an answer
    return found


def send_chunks(port, chunks, timeout_s=60):
    """POST /is_prime with a chunked body of `chunks` (bytes, framed already), sent as fast as
    the server reads them; (status, seconds). Stops at the server's answer."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(CHUNKED)
        try:
            for block in chunks:
                sock.sendall(block)
        except OSError:  # the server answered and closed before all of it
            pass
        data = sock.recv(65536)
    return int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1 ") else None, \
        time.monotonic() - start


def one_byte_chunks(total_bytes, block_bytes=64 * 1024):
    """A JSON list's body, [1,1,...], as 1-byte chunks: `total_bytes` on the wire, in blocks."""
    data = b"[" + b"1," * (total_bytes // 12) + b"1]"
    framed = b"".join(b"1\r\n%c\r\n" % byte for byte in data) + b"0\r\n\r\n"
    return [framed[i:i + block_bytes] for i in range(0, len(framed), block_bytes)]


def extension_chunks(total_bytes, block_bytes=64 * 1024):
    """1-byte chunks of a JSON body, each with a 1000-byte extension: `total_bytes` on the wire."""
    one = b"1;e=" + b"x" * 996 + b"\r\n1\r\n"
    block = one * (block_bytes // len(one))
    return [block] * (total_bytes // len(block))


class _Held:
    """Connections that each sent what the kernel took of one request at once, and are held
    open until stop()."""

    def __init__(self, port, connections, request, receive_buffer=None):
        self.socks = []
        for _ in range(connections):
            sock = socket.socket()
            if receive_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.connect(("127.0.0.1", port))
            sock.setblocking(False)
            try:
                sock.send(request)  # what the kernel takes now; the rest is never sent
            except BlockingIOError:
                pass
            self.socks.append(sock)

    def stop(self):
        """Close every connection."""
        for sock in self.socks:
            sock.close()


class NeverRead(_Held):
    """Connections with a small receive buffer pipelining GET /openapi.json, never reading,
    held until the server resets them (closed()) or stop()."""

    def __init__(self, port, connections, requests_each=300):
        super().__init__(port, connections,
                         b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * requests_each, 2048)

    def closed(self):
        """How many the server has closed (a reset or a FIN, seen without reading answers)."""
        count = 0
        for sock in self.socks:
            try:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
            except OSError:
                count += 1
                continue
            # tcpi_state: 1 ESTABLISHED; 8 CLOSE_WAIT (the server sent its FIN); 7 CLOSE (reset)
            count += info[0] != 1
        return count


def worker_usage(pids):
    """(CPU seconds, RSS MB) of `pids`."""
    return cpu_seconds(pids), memory_mb(pids)[0]


def during(url, attack, gets=20):
    """Run `attack()` in a thread while GET / is timed `gets` times: [(status, seconds)]."""
    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    time.sleep(0.5)
    timed = time_gets(url + "/", gets)
    thread.join(timeout=120)
    return timed


def main(argv=None):
    """Run each attack at the issue's size against URL and print the figures as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--pids", type=int, nargs="+", required=True, help="worker pids")
    parser.add_argument("--send-timeout-s", type=float, default=10.0)
    parser.add_argument("--together", action="store_true", help="only every attack at once")
    args = parser.parse_args(argv)
    port = int(args.url.rsplit(":", 1)[1].strip("/"))
    assert args.url.startswith("http://127.0.0.1:")

    def report(name, figures, before):
        cpu, rss = worker_usage(args.pids)
        print(json.dumps({"attack": name, **figures, "worker_cpu_s": round(cpu - before[0], 3),
                          "rss_mb_after": round(rss), "rss_mb_before": round(before[1])}),
              flush=True)

    if args.together:
        before = worker_usage(args.pids)
        gets, got = together(args.url, port, args.send_timeout_s)
        report("all at once", {"gets": gets, **got}, before)
        time.sleep(1)
        report("all at once, ended", {}, before)
        return
    for name, (request, _) in MALFORMED.items():
        before = worker_usage(args.pids)
        report(f"malformed: {name}", {"answers": [s for s, _ in answers(port, request)]}, before)
    for megabytes in (0.1, 0.4, 0.8, 1.6):
        before = worker_usage(args.pids)
        status, seconds = send_chunks(port, one_byte_chunks(int(megabytes * 1e6)))
        report(f"one_byte {megabytes} MB", {"status": status, "seconds": round(seconds, 3)},
               before)
    before = worker_usage(args.pids)
    results = []
    gets = during(args.url, lambda: results.extend(
        send_chunks(port, extension_chunks(40 * 10**6)) for _ in range(4)))
    report("extensions 4 x 40 MB", {"statuses": [s for s, _ in results], "gets": gets}, before)
    for connections in (400, 1000):
        before = worker_usage(args.pids)
        never = NeverRead(port, connections)
        try:
            time.sleep(1)
            gets = time_gets(args.url + "/", 20)
            report(f"never_read {connections}", {"gets": gets, "closed": never.closed()}, before)
            time.sleep(args.send_timeout_s + 1)
            report(f"never_read {connections}, SEND_TIMEOUT_S later",
                   {"closed": never.closed()}, before)
        finally:
            never.stop()
    before = worker_usage(args.pids)
    stalled = NearLimit(port, 1000)
    try:
        gets = time_gets(args.url + "/", 20)
        report("near_limit 1000", {"gets": gets, "refused": stalled.refused()}, before)
    finally:
        stalled.stop()
    time.sleep(1)
    report("near_limit 1000, closed", {}, before)
    before = worker_usage(args.pids)
    statuses = made_up_methods(port, 10_000)
    metrics = requests.get(args.url + "/metrics", timeout=30)
    report("methods 10000", {"statuses": statuses, "metrics_bytes": len(metrics.content)}, before)


def together(url, port, send_timeout_s):
    """Every attack at once, while GET / is timed: (GET / answers, what the attacks got)."""
    from bench.attack import Attack

    got = {}
    threads = [threading.Thread(target=fn, daemon=True) for fn in (
        lambda: got.update(extensions=[send_chunks(port, extension_chunks(40 * 10**6))[0]
                                       for _ in range(2)]),
        lambda: got.update(one_byte=[send_chunks(port, one_byte_chunks(1_600_000))[0]
                                     for _ in range(4)]),
        lambda: got.update(methods=made_up_methods(port, 2000)),
        lambda: got.update(malformed=[answers(port, request)[0][0]
                                      for request, _ in MALFORMED.values()]),
    )]
    slow = Attack(port, {"slowloris": 300, "silent": 300})
    never, stalled = NeverRead(port, 400), NearLimit(port, 400)
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        gets = time_gets(url + "/", 20)
        for thread in threads:
            thread.join(timeout=120)
        got["near_limit_refused"] = stalled.refused()
        time.sleep(send_timeout_s + 1)
        got["never_read_closed"] = never.closed()
    finally:
        for attack in (slow, never, stalled):
            attack.stop()
    return gets, got


def made_up_methods(port, count):
    """`count` requests with made-up methods, a connection each: {status: count}."""
    statuses = {}
    for i in range(count):
        [(status, _)] = answers(port, b"X%dQZ /healthz HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


class NearLimit(_Held):
    """Connections each sending a body just under MAX_BODY_BYTES but its last bytes, then
    stalling; `refused()` counts those the server answered 503 (past MAX_BUFFERED_BYTES)."""

    def __init__(self, port, connections, length=1_000_000, sent=900_000):
        super().__init__(port, connections,
                         HEAD + b"Content-Length: %d\r\n\r\n" % length + b" " * sent)

    def refused(self):
        """How many got a 503 so far."""
        count = 0
        for sock in self.socks:
            try:
                count += sock.recv(64).startswith(b"HTTP/1.1 503 ")
            except OSError:
                pass
        return count


if __name__ == "__main__":
    main()
