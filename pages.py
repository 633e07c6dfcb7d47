"""What a browser gets: the page of GET / with a waterfall of its reads, and readable error pages.

Everyone else (curl, requests, locust: `Accept: */*` or JSON) keeps getting JSON, and
`?format=json` forces it; `?format=html` forces the page.
"""
import math
from collections.abc import Mapping, Sequence

from flask import render_template, request
from werkzeug.http import HTTP_STATUS_CODES

from runtime.clock import Monotonic
from runtime.fanout import Outcome

FORMATS = ("auto", "json", "html")
# The waterfall's time axis is marked every AXIS_STEP_MS (or a multiple, for at most
# AXIS_MAX_TICKS marks) and ends at the first mark past the longest bar.
AXIS_STEP_MS = 100
AXIS_MAX_TICKS = 8


def wants_html() -> bool:
    """True when ?format=html, or the request prefers HTML to JSON (a browser's Accept)."""
    forced = request.args.get("format")
    if forced in ("json", "html"):
        return forced == "html"
    # A browser sends text/html with q=1 and */* with less; curl and requests send */* only,
    # which matches both equally, and then the first listed wins.
    return request.accept_mimetypes.best_match(("application/json", "text/html")) == "text/html"


def index_page(mode: str, modes: Sequence[str], outcomes: Mapping[str, Outcome],
               timings: Mapping[str, float], errors: Mapping[str, str], arrived: Monotonic) -> str:
    """The page of GET /: the three results and a waterfall of the reads, drawn from the same
    durations as Server-Timing, each bar placed where its read started after `arrived`.

    The axis reaches at least the sum of the reads, so the concurrent and the sequential page
    draw the same reads on the same scale and can be compared side by side."""
    total_ms = timings["total"]
    reads_sum_ms = round(sum(timings[name] for name in outcomes), 1)
    starts = {name: round((o.started - arrived) * 1000, 1) for name, o in outcomes.items()}
    longest = max(total_ms, reads_sum_ms, *(starts[name] + timings[name] for name in outcomes), 1)
    step = AXIS_STEP_MS * math.ceil(longest / AXIS_STEP_MS / AXIS_MAX_TICKS)
    axis_ms = step * math.ceil(longest / step)
    bars = [{"name": name, "start_ms": starts[name], "ms": timings[name],
             "left": _percent(starts[name], axis_ms), "width": _percent(timings[name], axis_ms),
             "failed": outcome.error is not None}
            for name, outcome in outcomes.items()]
    return render_template(
        "index.html", mode=mode, modes=modes, other_mode=next(m for m in modes if m != mode),
        outcomes=outcomes,
        errors=errors, bars=bars, total_ms=total_ms, total_width=_percent(total_ms, axis_ms),
        reads_sum_ms=reads_sum_ms,
        ticks=[(ms, _percent(ms, axis_ms)) for ms in range(0, axis_ms + 1, step)])


def error_page(status: int, message: str) -> str:
    """A readable page for an error that a browser met."""
    return render_template("error.html", status=status, message=message,
                           reason=HTTP_STATUS_CODES.get(status, "Error"))


def _percent(ms: float, axis_ms: float) -> float:
    return round(100 * max(0.0, ms) / axis_ms, 2)
