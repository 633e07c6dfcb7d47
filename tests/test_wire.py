"""Reading requests in the poller thread: the framing table, the deadlines, and slow, silent and
hostile clients against real gunicorn while GET / is timed beside them."""
import json
import socket
import time

import pytest
import requests

from bench.attack import Attack, time_gets
from bench.bench import deployment_pids, memory_mb
from dev.harness import worker_pids
from runtime.wire import FEED_BYTES, Limits, Refusal, RequestReader
from tests.helpers import ended_reads

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


CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"
AS_GUNICORN_SEES_IT = POST + b"Content-Length: 3\r\n\r\n[7]"


@pytest.mark.parametrize("pieces, canonical", [
    ([GET], GET),
    ([b"GET / HT", b"TP/1.1\r\nHost: x\r", b"\n\r\n"], GET),
    ([POST + b"Content-Length: 3\r\n\r\n[7]"], AS_GUNICORN_SEES_IT),
    ([POST + b"Content-Length: 3\r\n\r\n[", b"7]"], AS_GUNICORN_SEES_IT),
    ([CHUNKED + b"3\r\n[7]\r\n0\r\n\r\n"], AS_GUNICORN_SEES_IT),
    # Extensions and trailer fields are read, counted and dropped: gunicorn sees the data.
    ([CHUNKED + b"2;x=y;q=\"a b\"\r\n[7", b"\r\n1\r\n]\r\n0\r\nT: 1\r\n\r\n"],
     AS_GUNICORN_SEES_IT),
    ([GET + GET], GET),  # pipelined: the first request is complete, the second waits behind it
    ([b"GET / HTTP/1.0\r\n\r\n"], b"GET / HTTP/1.0\r\n\r\n"),  # no Host needed in 1.0
    ([b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nPRI *"],
     b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
])
def test_gunicorn_gets_one_request_framed_by_content_length_alone(pieces, canonical):
    reader, complete = read(*pieces)
    assert complete and reader.take().canonical() == canonical


@pytest.mark.parametrize("pieces", [
    [b"GET / HTTP/1.1\r\nHost: x\r\n"],
    [POST + b"Content-Length: 3\r\n\r\n[7"],
    [CHUNKED + b"3\r\n[7]\r\n"],
    [CHUNKED + b"3\r\n[7]\r\n0\r\nT: 1\r\n"],
])
def test_a_request_not_all_here_is_not_complete(pieces):
    assert read(*pieces)[1] is False


@pytest.mark.parametrize("pieces, status", [
    # The malformed chunked bodies, each a 500 or two answers before (issue 23).
    ([CHUNKED + b"3   \r\n[7]\r\n0\r\n\r\n"], 400),
    ([CHUNKED + b"3\r\n[7]X\r\n0\r\n\r\n"], 400),
    ([CHUNKED + b"3;@@\r\n[7]\r\n0\r\n\r\n"], 400),
    ([CHUNKED + b"3\r\n[7]\r\n0\r\nno colon\r\n\r\n"], 400),
    ([CHUNKED + b"3\r\n[7]\r\n0\r\nContent-Length: 5\r\n\r\n"], 400),
    ([CHUNKED.replace(b"HTTP/1.1", b"HTTP/1.2") + b"0\r\n\r\n"], 505),
    ([CHUNKED + b"ffffffffffffffffff\r\n"], 400),
    ([CHUNKED + b"xyz\r\n"], 400),
    ([POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n"], 400),
    ([POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"], 400),
    ([POST + b"Transfer-Encoding: gzip\r\n\r\n"], 400),
    ([POST + b"Content-Length: -1\r\n\r\n"], 400),
    ([b"GET / HTTP/1.1\r\n\r\n"], 400),  # no Host (RFC 9112, section 3.2)
    ([b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"], 400),
    ([b"GET / HTTP/1.9\r\nHost: x\r\n\r\n"], 505),
    ([b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"], 505),
    ([b"XQZPLKW / HTTP/1.1\r\nHost: x\r\n\r\n"], 501),
    ([b"GET / HTTP/1.1\nHost: x\n\n"], 400),
    # Past the limits: every byte of a chunked body on the wire counts, framing included.
    ([CHUNKED + (b"28\r\n" + b"x" * 40 + b"\r\n") * 3], 413),
    ([CHUNKED + (b"1;" + b"e" * 40 + b"\r\nx\r\n") * 3], 413),  # 3 bytes of data
    ([CHUNKED + b"1\r\nx\r\n" * 20], 413),  # 20 bytes of data, 120 on the wire
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
    assert reader.take().canonical() == AS_GUNICORN_SEES_IT


def test_pipelined_requests_wait_unparsed_and_start_their_clocks_in_turn():
    reader = RequestReader(LIMITS, now=0.0)
    assert reader.feed(GET.replace(b" / ", b" /a ") + GET.replace(b" / ", b" /b ") + b"GET /c",
                       0.0)
    first = reader.take()
    assert first.target == b"/a" and not first.pipelined
    assert reader.resume(now=50.0, idle_s=5)  # its turn: /b was already here
    second = reader.take()
    assert second.target == b"/b" and second.pipelined
    assert not reader.resume(now=60.0, idle_s=5) and reader.phase == "head"
    assert reader.deadline == pytest.approx(60.0 + 20, abs=0.02)  # /c's head, from its turn


def test_a_connection_holds_at_most_a_piece_beyond_its_request():
    reader = RequestReader(LIMITS, now=0.0)
    assert reader.feed(GET * 5000, 0.0)  # 130 KB of pipelined requests in one recv
    assert reader.buffered >= len(GET * 5000) - 2 * FEED_BYTES  # not parsed ahead
    reader.take()
    ready = 1
    while reader.resume(0.0, 5):
        reader.take()
        ready += 1
    assert ready == 5000


def test_a_megabyte_of_one_byte_chunks_is_parsed_in_linear_time():
    limits = Limits(10, 20, 40, 20, 60, 500, 32768, 10**6)
    reader = RequestReader(limits, 0.0)
    start = time.process_time()
    with pytest.raises(Refusal) as refused:
        for _ in range(40):
            reader.feed(b"1\r\nx\r\n" * 43691 if reader.received else CHUNKED, 0.0)
    assert refused.value.status == 413
    # Generous: about 10 ms here; gunicorn's own chunked reader took 88 s for 800 KB.
    assert time.process_time() - start < 0.5


def test_deadlines_follow_mod_reqtimeout():
    reader = RequestReader(LIMITS, now=100.0)
    assert reader.deadline == 110.0  # nothing yet: the idle timeout
    reader.feed(b"GET / HTTP/1.1\r\n", now=105.0)
    assert reader.deadline == pytest.approx(105.0 + 20 + 16 / 500)  # from the first byte
    reader.feed(b"X: " + b"y" * 500 + b"\r\n", now=106.0)  # 1 KiB limit: still a head
    assert reader.deadline == pytest.approx(105.0 + 20 + 521 / 500)
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
                "stalled": SHORT["READ_BODY_TIMEOUT_S"],
                "huge_chunk": SHORT["READ_BODY_TIMEOUT_S"],
                "silent": SHORT["READ_IDLE_TIMEOUT_S"]}
    # A chunk size up to 2**64 is valid framing: its data counts on the wire like any body's.
    expected = {"slowloris": 408, "slow_body": 408, "stalled": 408, "huge_chunk": 408,
                "silent": None}
    for kind, outcomes in summary.items():
        assert set(outcomes) == {expected[kind]}, (kind, outcomes)
        assert all(slowest <= timeouts[kind] + 1 for _, slowest in outcomes.values()), kind
    counted = ended_reads(service)
    assert counted.get("head_timeout") == ATTACK["slowloris"]
    assert counted.get("body_timeout") == (ATTACK["slow_body"] + ATTACK["stalled"]
                                           + ATTACK["huge_chunk"])
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


def test_a_reader_closed_twice_stays_closed():
    # A connection's reader is closed when its lingering close starts and again when it ends.
    reader = RequestReader(LIMITS, 0.0)
    assert not reader.feed(b"GET / HTTP/1.1\r\nHost: x\r\n", 0.0)
    reader.close()
    reader.close()
    assert reader.buffered == 0
