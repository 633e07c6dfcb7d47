"""Reading requests in the poller thread: the framing table, the deadlines, and slow, silent and
hostile clients against real gunicorn while GET / is timed beside them."""
import json
import socket
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.attack import Attack, time_gets
from bench.bench import deployment_pids, memory_mb
from dev.harness import worker_pids
from runtime.reader import Limits, Refusal, RequestReader

LIMITS = Limits(idle_s=10, head_s=20, head_max_s=40, body_s=20, body_max_s=60,
                min_rate_bps=500, max_head_bytes=1024, max_body_bytes=100)
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /is_prime HTTP/1.1\r\nHost: x\r\n"


def read(*pieces, now=0.0):
    """A reader fed `pieces` one after another; the last feed's answer."""
    reader = RequestReader(LIMITS, now)
    complete = False
    for piece in pieces:
        complete = reader.feed(piece, now)
    return reader, complete


@pytest.mark.parametrize("pieces, request_bytes", [
    ([GET], GET),
    ([b"GET / HT", b"TP/1.1\r\nHost: x\r", b"\n\r\n"], GET),
    ([POST + b"Content-Length: 3\r\n\r\n[7]"], POST + b"Content-Length: 3\r\n\r\n[7]"),
    ([POST + b"Content-Length: 3\r\n\r\n[", b"7]"], POST + b"Content-Length: 3\r\n\r\n[7]"),
    ([POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\n[7]\r\n0\r\n\r\n"],
     POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\n[7]\r\n0\r\n\r\n"),
    ([POST + b"Transfer-Encoding: chunked\r\n\r\n2;x=y\r\n[7", b"\r\n1\r\n]\r\n0\r\nT: 1\r\n\r\n"],
     POST + b"Transfer-Encoding: chunked\r\n\r\n2;x=y\r\n[7\r\n1\r\n]\r\n0\r\nT: 1\r\n\r\n"),
    ([GET + GET], GET),  # pipelined: the first request is complete, the second waits behind it
    # Framing gunicorn's parser refuses with a 400 is handed over with the head alone.
    ([POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n"],
     POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n"),
    ([POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"],
     POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ([POST + b"Transfer-Encoding: gzip\r\n\r\n"], POST + b"Transfer-Encoding: gzip\r\n\r\n"),
    ([POST + b"Content-Length: -1\r\n\r\n"], POST + b"Content-Length: -1\r\n\r\n"),
])
def test_a_request_is_complete_once_its_framing_says_so(pieces, request_bytes):
    reader, complete = read(*pieces)
    assert complete and bytes(reader.buf[:reader.complete_at]) == request_bytes


@pytest.mark.parametrize("pieces", [
    [b"GET / HTTP/1.1\r\nHost: x\r\n"],
    [POST + b"Content-Length: 3\r\n\r\n[7"],
    [POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\n[7]\r\n"],
    [POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\n[7]\r\n0\r\nT: 1\r\n"],
])
def test_a_request_not_all_here_is_not_complete(pieces):
    assert read(*pieces)[1] is False


@pytest.mark.parametrize("pieces, status", [
    ([POST + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n"], 400),
    ([POST + b"Transfer-Encoding: chunked\r\n\r\nxyz\r\n"], 400),
    ([POST + b"Transfer-Encoding: chunked\r\n\r\n65\r\n"], 400),  # one chunk past 100 bytes
    ([POST + b"Transfer-Encoding: chunked\r\n\r\n" + b"1" * 2000], 400),  # no end of line
    ([POST + b"Transfer-Encoding: chunked\r\n\r\n40\r\n" + b"x" * 64 + b"\r\n40\r\n"], 413),
    ([POST + b"Content-Length: 101\r\n\r\n"], 413),
    ([b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200], 431),
])
def test_bad_framing_or_sizes_are_refused_at_once(pieces, status):
    with pytest.raises(Refusal) as refused:
        read(*pieces)
    assert refused.value.status == status and str(refused.value)


def test_an_expected_continue_is_answered_once_and_hidden_from_gunicorn():
    reader, complete = read(POST + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert not complete and reader.take_continue() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert reader.take_continue() == b""
    assert reader.feed(b"[7]", 0.0)
    assert bytes(reader.buf) == POST + b"Content-Length: 3\r\n\r\n[7]"


def test_deadlines_follow_mod_reqtimeout():
    reader = RequestReader(LIMITS, now=100.0)
    assert reader.deadline == 110.0  # nothing yet: the idle timeout
    reader.feed(b"GET / HTTP/1.1\r\n", now=105.0)
    assert reader.deadline == pytest.approx(105.0 + 20 + 16 / 500)  # from the first byte
    reader.feed(b"X: " + b"y" * 500 + b"\r\n", now=106.0)  # 1 KiB limit: still a head
    assert reader.deadline == pytest.approx(105.0 + 20 + len(reader.buf) / 500)
    body = RequestReader(LIMITS, now=0.0)
    body.feed(POST + b"Content-Length: 90\r\n\r\n", now=1.0)
    body.feed(b"x" * 50, now=2.0)
    assert body.deadline == pytest.approx(1.0 + 20 + 50 / 500)  # the body's clock
    slow = RequestReader(Limits(10, 20, 21, 20, 60, 1, 1024, 100), now=0.0)
    slow.feed(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 50, now=0.0)
    assert slow.deadline == 21  # extended by the rate, up to the head's most


# Short deadlines, so that the attack tests wait seconds, not a minute.
SHORT = {"READ_IDLE_TIMEOUT_S": 2, "READ_HEAD_TIMEOUT_S": 3, "READ_HEAD_MAX_S": 4,
         "READ_BODY_TIMEOUT_S": 3, "READ_BODY_MAX_S": 5, "KEEPALIVE": 2}
LONGEST_S = 5  # the longest of them
ATTACK = {"slowloris": 150, "slow_body": 60, "huge_chunk": 30, "stalled": 30, "silent": 200}


def ended_reads(service):
    """{reason: count} of request_reads_ended_total in /metrics."""
    text = requests.get(service.url + "/metrics", timeout=10).text
    return {sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "request_reads_ended" for sample in family.samples
            if sample.name.endswith("_total")}


@pytest.fixture
def short_reads(upstream, serve):
    """gunicorn with SHORT read deadlines and the seed's latency."""
    return serve(upstream.url + "/?delay_ms=300", FILE_DELAY_MS=100, DB_DELAY_MS=200, **SHORT)


@pytest.mark.slow
@pytest.mark.faults
def test_slow_silent_and_hostile_clients_cost_get_slash_nothing(short_reads):
    service = short_reads
    workers = worker_pids(service)
    # Warm: the first requests of each worker start its read threads, database and API
    # connections; that memory is not the attack's.
    assert {status for status, _ in time_gets(service.url + "/", 10)} == {200}
    rss_before, _ = memory_mb(deployment_pids(service))
    attack = Attack(service.port, ATTACK)
    try:
        time.sleep(0.5)
        during = time_gets(service.url + "/", 10)
        give_up = time.monotonic() + LONGEST_S + 3
        while attack.still_open and time.monotonic() < give_up:
            time.sleep(0.2)
        summary, still_open = attack.summary(), attack.still_open
    finally:
        attack.stop()
    print(f"\nduring the attack: {during}\nended: {summary}\nRSS before: {rss_before:.0f} MB")
    assert [status for status, _ in during] == [200] * 10
    assert max(seconds for _, seconds in during) < 1.0
    assert still_open == 0
    timeouts = {"slowloris": SHORT["READ_HEAD_TIMEOUT_S"],
                "slow_body": SHORT["READ_BODY_TIMEOUT_S"],
                "stalled": SHORT["READ_BODY_TIMEOUT_S"], "huge_chunk": 0,
                "silent": SHORT["READ_IDLE_TIMEOUT_S"]}
    expected = {"slowloris": 408, "slow_body": 408, "stalled": 408, "huge_chunk": 400,
                "silent": None}
    for kind, outcomes in summary.items():
        assert set(outcomes) == {expected[kind]}, (kind, outcomes)
        assert all(slowest <= timeouts[kind] + 1 for _, slowest in outcomes.values()), kind
    counted = ended_reads(service)
    assert counted.get("head_timeout") == ATTACK["slowloris"]
    assert counted.get("body_timeout") == ATTACK["slow_body"] + ATTACK["stalled"]
    assert counted.get("bad_chunk") == ATTACK["huge_chunk"]
    assert counted.get("idle", 0) >= ATTACK["silent"]
    assert worker_pids(service) == workers  # no worker restarted
    log = service.output()
    assert " 500 " not in log and "Traceback" not in log
    assert log.count("head_timeout from") == ATTACK["slowloris"]  # one line a connection
    rss_after, _ = memory_mb(deployment_pids(service))
    assert rss_after - rss_before < 50, (rss_before, rss_after)


def test_a_worker_full_of_idle_connections_still_takes_new_clients(serve):
    service = serve(WORKER_CONNECTIONS=100, **SHORT)
    idle = Attack(service.port, {"silent": 400})  # twice what 2 workers may hold
    try:
        answers = time_gets(service.url + "/healthz", 10)
    finally:
        idle.stop()
    counted = ended_reads(service)
    assert [status for status, _ in answers] == [200] * 10
    assert counted.get("evicted", 0) >= 200


def test_keep_alive_pipelining_and_a_large_post_are_unaffected(short_reads):
    numbers = [str(10**99 + i) for i in range(1000)]  # ~100 KB: read in several recvs
    with requests.Session() as session:
        first = session.get(short_reads.url + "/healthz", timeout=10)
        time.sleep(SHORT["KEEPALIVE"] / 2)
        post = session.post(short_reads.url + "/is_prime", json=numbers, timeout=10)
        again = session.get(short_reads.url + "/healthz", timeout=10)
    assert first.status_code == post.status_code == again.status_code == 200
    assert len(post.json()) == len(numbers)
    with socket.create_connection(("127.0.0.1", short_reads.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2
                     + b"POST /is_prime HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                       b"Content-Type: application/json\r\nContent-Length: 5\r\n\r\n")
        time.sleep(0.3)
        sock.sendall(b"[7,9]")
        received = b""
        while received.count(b"HTTP/1.1 200") < 3 or not received.endswith(b"}"):
            received += sock.recv(65536)
    assert received.count(b"HTTP/1.1 100 Continue") == 1
    assert json.loads(received.rsplit(b"\r\n\r\n", 1)[1]) == {"7": True, "9": False}


def test_a_body_over_the_limit_is_413_without_reading_it(short_reads):
    with socket.create_connection(("127.0.0.1", short_reads.port), timeout=10) as sock:
        sock.sendall(b"POST /is_prime HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413 ") and b"application/json" in head
