"""Slow and silent clients against a server on 127.0.0.1 (issue 15), while GET / is timed beside
them from fresh connections.

    slowloris   an unfinished head, one more header line every TRICKLE_S
    slow body   Content-Length: 100000, one byte of the body every TRICKLE_S
    stalled     a chunked body whose first chunk never comes (after its size line)
    huge chunk  a chunk size of ffffffffffffffff
    silent      connects and sends nothing

`python -m bench.attack` runs the issue's numbers against the default deployment and prints what
each kind of connection got and when; tests/test_wire.py runs a smaller one with short
timeouts and asserts on the same figures.
"""
import argparse
import json
import selectors
import socket
import threading
import time

import requests

TRICKLE_S = 2.0
KINDS = {
    "slowloris": (b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n"),
    "slow_body": (b"POST /is_prime HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n", b" "),
    "stalled": (b"POST /is_prime HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"10\r\n", None),
    "huge_chunk": (b"POST /is_prime HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"ffffffffffffffff\r\n", None),
    "silent": (b"", None),
}


class Attack:
    """Connections of each kind, held open and trickled by a thread of their own until the server
    answers or closes them (or stop()); what each got, and after how long, is in `ended`."""

    def __init__(self, port, counts):
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self.ended = []  # (kind, seconds after connecting, status or None for a plain close)
        self._open = {}
        for kind, count in counts.items():
            first, _ = KINDS[kind]
            for _ in range(count):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                if first:
                    sock.sendall(first)
                sock.setblocking(False)
                self._open[sock] = (kind, time.monotonic())
                self._selector.register(sock, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def still_open(self):
        """Connections the server has neither answered nor closed."""
        return len(self._open)

    def _run(self):
        next_trickle = time.monotonic() + TRICKLE_S
        while not self._stop.is_set() and self._open:
            for key, _ in self._selector.select(timeout=0.05):
                self._ended(key.fileobj)
            if time.monotonic() >= next_trickle:
                next_trickle += TRICKLE_S
                for sock, (kind, _) in list(self._open.items()):
                    more = KINDS[kind][1]
                    if more:
                        try:
                            sock.send(more)
                        except OSError:
                            self._ended(sock)

    def _ended(self, sock):
        kind, since = self._open.pop(sock)
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
        self.ended.append((kind, time.monotonic() - since, status))
        self._selector.unregister(sock)
        sock.close()

    def stop(self):
        """Close every connection still open."""
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in list(self._open):
            self._selector.unregister(sock)
            sock.close()
        self._open.clear()

    def summary(self):
        """{kind: {status: (count, slowest seconds)}} of the connections that ended."""
        result = {}
        for kind, seconds, status in self.ended:
            count, slowest = result.setdefault(kind, {}).get(status, (0, 0.0))
            result[kind][status] = (count + 1, max(slowest, round(seconds, 2)))
        return result


def time_gets(url, count, timeout_s=10):
    """GET `url` `count` times, each on a fresh connection: [(status or error, seconds)]."""
    assert url.startswith("http://127.0.0.1:")
    results = []
    for _ in range(count):
        start = time.monotonic()
        try:
            status = requests.get(url, timeout=timeout_s,
                                  headers={"Connection": "close"}).status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        results.append((status, time.monotonic() - start))
    return results


# The issue's 400 stalled chunked bodies: half with a chunk size past any limit, half stopping after
# a sane one.
ISSUE_COUNTS = {"slowloris": 1000, "slow_body": 400, "huge_chunk": 200, "stalled": 200,
                "silent": 2000}


def main():
    """The issue's attack against the default deployment; prints the figures."""
    import tempfile

    from dev.harness import deployment

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="times the issue's counts")
    args = parser.parse_args()
    counts = {kind: int(n * args.scale) for kind, n in ISSUE_COUNTS.items()}
    with tempfile.TemporaryDirectory() as data, deployment(data) as (service, _):
        print("before:", _figures(time_gets(service.url + "/", 20)),
              _processes(service))
        attack = Attack(service.port, counts)
        try:
            time.sleep(3)
            print("during:", _figures(time_gets(service.url + "/", 20)))
            give_up = time.monotonic() + 70
            while attack.still_open and time.monotonic() < give_up:
                time.sleep(1)
            print("ended:", json.dumps(attack.summary()), "still open:", attack.still_open)
        finally:
            attack.stop()
        print("after:", _figures(time_gets(service.url + "/", 20)), _processes(service))
        errors = [line for line in service.output().splitlines() if " 500 " in line
                  or "Traceback" in line or "WORKER TIMEOUT" in line]
        print("5xx, tracebacks and worker timeouts in the log:", len(errors))


def _processes(service):
    from bench.bench import deployment_pids, memory_mb
    from dev.harness import worker_pids

    rss_mb, _ = memory_mb(deployment_pids(service))
    return f"workers {sorted(worker_pids(service))}, RSS {rss_mb:.0f} MB"


def _figures(results):
    ok = sorted(seconds for status, seconds in results if status == 200)
    return (f"{len(ok)}/{len(results)} x 200, p50 {ok[len(ok) // 2]:.3f} s, slowest "
            f"{ok[-1]:.3f} s" if ok else f"0/{len(results)}: {results[:3]}")


if __name__ == "__main__":
    main()
