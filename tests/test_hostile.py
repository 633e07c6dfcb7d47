"""Issue 23's hostile clients against real gunicorn (bench/hostile.py), bounded and on 127.0.0.1:
each costs nothing it did not earn, and GET / from fresh connections is served beside it."""
import json
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.attack import time_gets
from bench.hostile import (
    CHUNKED,
    HEAD,
    MALFORMED,
    NeverRead,
    answers,
    during,
    extension_chunks,
    one_byte_chunks,
    send_chunks,
    worker_usage,
)
from dev.harness import worker_pids
from tests.helpers import ended_reads

pytestmark = [pytest.mark.slow, pytest.mark.faults]

SEND_TIMEOUT_S = 2.0
BUFFER_BUDGET = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def server(serve_module):
    """gunicorn with a short send timeout and a small budget of request bytes."""
    return serve_module(SEND_TIMEOUT_S=SEND_TIMEOUT_S, MAX_BUFFERED_BYTES=BUFFER_BUDGET)


def assert_served(gets):
    """Every GET / from a fresh connection was a 200 within 1 s."""
    assert [status for status, _ in gets] == [200] * len(gets), gets
    assert max(seconds for _, seconds in gets) < 1.0, gets


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_request_gets_one_answer_and_no_5xx(server, name):
    request, expected = MALFORMED[name]
    [(status, body)] = answers(server.port, request)
    assert status == expected
    assert json.loads(body)["status" if status >= 400 else "7"] == (status if status >= 400
                                                                   else True)
    assert "Traceback" not in server.output()


def test_clients_that_never_read_hold_no_thread(server):
    # 160 connections, each holding an answer the client will not take: 2.5 x the tests'
    # 2 x 32 request threads, which gthread's blocking sendall held until the client read.
    never = NeverRead(server.port, 160, requests_each=50)
    try:
        time.sleep(0.5)
        assert_served(time_gets(server.url + "/", 20))
        give_up = time.monotonic() + SEND_TIMEOUT_S + 3
        while never.closed() < len(never.socks) and time.monotonic() < give_up:
            time.sleep(0.2)
        assert never.closed() == len(never.socks)  # each dropped after SEND_TIMEOUT_S
    finally:
        never.stop()
    assert ended_reads(server).get("send_timeout", 0) >= 160


def test_one_byte_chunks_cost_linear_cpu(server):
    pids = worker_pids(server)
    cpu_before, _ = worker_usage(pids)
    status, _ = send_chunks(server.port, one_byte_chunks(1_200_000))  # over the ~1 MB limit
    cpu_s = worker_usage(pids)[0] - cpu_before
    assert status == 413
    # Generous (about 0.05 s here): gunicorn's chunked reader took 88 s for 800 KB.
    assert cpu_s < 0.5, cpu_s


def test_a_valid_body_in_one_byte_chunks_is_served(server):
    body = json.dumps([str(7)] * 50).encode()
    framed = b"".join(b"1;ext=v\r\n%c\r\n" % byte for byte in body) + b"0\r\nT: 1\r\n\r\n"
    [(status, answer)] = answers(server.port, CHUNKED.replace(b"Content-Type", b"Connection: "
                                                              b"close\r\nContent-Type") + framed)
    assert status == 200 and json.loads(answer) == {"7": True}


def test_chunk_extensions_count_and_cost_no_memory(server):
    pids = worker_pids(server)
    _, rss_before = worker_usage(pids)
    results = []
    gets = during(server.url, lambda: results.extend(
        send_chunks(server.port, extension_chunks(40 * 10**6)) for _ in range(2)))
    _, rss_after = worker_usage(pids)
    assert [status for status, _ in results] == [413, 413]  # at ~1 MB on the wire, not 40
    assert_served(gets)
    assert rss_after - rss_before < 20, (rss_before, rss_after)


def test_stalled_near_limit_bodies_stay_within_the_budget(server):
    pids = worker_pids(server)
    time_gets(server.url + "/", 20)  # warm: the same requests as during the attack
    _, rss_before = worker_usage(pids)
    socks, held = [], 900_000
    try:
        for _ in range(100):  # 90 MB if all were held; the budget is 2 x 8 MB
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(HEAD + b"Content-Length: 1000000\r\n\r\n" + b" " * held)
            socks.append(sock)
        time.sleep(0.5)
        gets = time_gets(server.url + "/", 20)
        _, rss_during = worker_usage(pids)
        refused = 0
        for sock in socks:
            sock.settimeout(0.5)
            try:
                refused += sock.recv(200).startswith(b"HTTP/1.1 503 ")
            except TimeoutError:
                pass
    finally:
        for sock in socks:
            sock.close()
    assert_served(gets)
    assert refused >= 100 - 2 * BUFFER_BUDGET // held
    # The budget, and what reading and refusing cost beside it: not what the clients sent.
    assert rss_during - rss_before < 2 * BUFFER_BUDGET / 1e6 + 30, (rss_before, rss_during)
    time.sleep(1.0)
    _, rss_after = worker_usage(pids)
    assert rss_after - rss_before < 20, (rss_before, rss_after)


def test_made_up_methods_are_501_before_the_app(server):
    [(status, body)] = answers(server.port, b"XQZPLKW /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 501 and "method" in json.loads(body)["error"]


def test_pipelined_requests_are_timed_from_their_turn(server):
    found = answers(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 200, timeout_s=30)
    # Each was a 503 once they had waited in the socket behind the others (issue 23).
    assert [status for status, _ in found] == [200] * 200


# Chunked bodies, valid and broken: sizes with extensions, data, CRLFs, trailers.
_chunk = st.tuples(st.integers(1, 40), st.sampled_from([b"", b";a", b";a=b", b';q="x y"', b";@"]),
                   st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"X\r\n", b""]))
_trailer = st.sampled_from([b"", b"T: 1\r\n", b"Content-Length: 3\r\n", b"bad\r\n"])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(_chunk, max_size=6), trailer=_trailer, end=st.booleans())
def test_any_chunked_body_gets_exactly_one_answer_and_no_5xx(server, chunks, trailer, end):
    data = b"[" + b"7," * 30 + b"7]"
    body, offset, valid = b"", 0, True
    for size, extension, terminator in chunks:
        piece = data[offset:offset + size]
        offset += len(piece)
        body += b"%x%s\r\n%s%s" % (len(piece), extension, piece, terminator)
        valid &= extension != b";@" and terminator == b"\r\n" and bool(piece)
    body += b"0\r\n" + trailer + b"\r\n" if end else b""
    valid &= end and trailer in (b"", b"T: 1\r\n")
    request = CHUNKED.replace(b"Content-Type", b"Connection: close\r\nContent-Type") + body
    found = answers(server.port, request)
    if valid or end:
        assert len(found) == 1, found
    else:
        assert len(found) <= 1  # an unfinished body: a 408 later, or nothing before the close
    assert all(status < 500 for status, _ in found), found
    if valid and offset == len(data):
        assert found[0][0] == 200
