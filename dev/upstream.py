"""The stand-in for the remote JSON API that GET / reads: a small aiohttp server, so it is never
the bottleneck. `make run` starts it beside gunicorn; the tests and benchmarks start their own.

    python -m dev.upstream --port 8001 --delay-ms 300

Each GET / answers after the configured delay (a real network wait for the caller); a
`?delay_ms=N` query parameter overrides it per request, and `?drip_ms=N` sends the body one byte
every N ms (an upstream that never stalls a single read, but outlasts any deadline).
"""
import argparse
import asyncio
import itertools
import json
import os
import signal
import threading

from aiohttp import web

from config import Config

PARENT_POLL_S = 1.0


async def _drip(request, body, every_s):
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    for i in range(len(body)):
        await response.write(body[i:i + 1])
        await asyncio.sleep(every_s)
    return response


def create_upstream(delay_ms):
    """Build the aiohttp application."""
    counter = itertools.count(1)

    async def quote(request):
        try:
            delay = int(request.query.get("delay_ms", delay_ms))
        except ValueError:
            raise web.HTTPBadRequest(text="delay_ms must be an integer") from None
        await asyncio.sleep(delay / 1000)
        body = {"source": "upstream", "message": "hello from the upstream API",
                "serial": next(counter), "delay_ms": delay,
                "traceparent": request.headers.get("traceparent")}
        if "drip_ms" in request.query:
            return await _drip(request, json.dumps(body).encode(),
                               int(request.query["drip_ms"]) / 1000)
        return web.json_response(body)

    async def health(_request):
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/", quote)
    app.router.add_get("/healthz", health)
    return app


async def _exit_with_parent(app):
    # Started by gunicorn's master: if that dies without stopping us (SIGKILL), stop too.
    parent = os.getppid()

    async def watch():
        while os.getppid() == parent:
            await asyncio.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    task = asyncio.create_task(watch())
    yield
    task.cancel()


def serve_in_thread(port, delay_ms, host="127.0.0.1"):
    """Serve the stand-in on `port` from a daemon thread of this process (`flask run` uses it);
    False when something already listens there."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_upstream(delay_ms), access_log=None)
    try:
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, host, port).start())
    except OSError:  # the port is taken: an upstream may already run there
        loop.run_until_complete(runner.cleanup())
        loop.close()
        return False
    threading.Thread(target=loop.run_forever, name="stand-in-api", daemon=True).start()
    return True


def main(argv=None):
    """Run the upstream in the foreground until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=Config.UPSTREAM_PORT)
    parser.add_argument("--delay-ms", type=int, default=Config.API_DELAY_MS)
    parser.add_argument("--exit-with-parent", action="store_true")
    args = parser.parse_args(argv)
    app = create_upstream(args.delay_ms)
    if args.exit_with_parent:
        app.cleanup_ctx.append(_exit_with_parent)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None,
                backlog=2048, shutdown_timeout=1)


if __name__ == "__main__":
    main()
