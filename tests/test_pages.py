"""What a browser gets from GET / and from errors, and what everyone else keeps getting."""
from html.parser import HTMLParser

import pytest

from services import get_sources

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


class Page(HTMLParser):
    """The parts of a page the tests look at: elements by class, with their attributes."""

    def __init__(self, text):
        super().__init__()
        self.by_class = {}
        self.ids = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in (attrs.get("class") or "").split():
            self.by_class.setdefault(name, []).append(attrs)
        if "id" in attrs:
            self.ids[attrs["id"]] = attrs


def page(response):
    """The parsed page of an HTML response."""
    assert response.mimetype == "text/html"
    return Page(response.get_data(as_text=True))


@pytest.mark.parametrize("headers, query, html", [
    ({"Accept": BROWSER}, "", True),
    ({"Accept": "*/*"}, "", False),  # curl, requests, locust
    ({}, "", False),
    ({"Accept": "application/json"}, "", False),
    ({"Accept": "text/html"}, "", True),
    ({"Accept": BROWSER}, "?format=json", False),
    ({"Accept": "*/*"}, "?format=html", True),
])
def test_index_answers_html_to_browsers_and_json_to_the_rest(client, headers, query, html):
    response = client.get("/" + query, headers=headers)
    assert response.status_code == 200
    assert response.mimetype == ("text/html" if html else "application/json")
    assert "Accept" in response.vary and "Server-Timing" in response.headers


def test_the_json_keeps_its_shape_for_api_clients(client):
    body = client.get("/", headers={"Accept": "*/*"}).get_json()
    assert list(body) == ["result_file", "result_db", "result_api", "mode", "timings_ms"]


def test_the_page_shows_three_results_and_a_bar_for_each_read(client):
    response = client.get("/", headers={"Accept": BROWSER})
    parsed = page(response)
    assert [r["data-source"] for r in parsed.by_class["result"]] == ["file", "db", "api"]
    bars = {bar["data-source"]: bar for bar in parsed.by_class["bar"] if "data-source" in bar}
    assert list(bars) == ["file", "db", "api"]
    header = dict(part.split(";dur=") for part in response.headers["Server-Timing"].split(", "))
    assert {name: bar["data-ms"] for name, bar in bars.items()} == {
        name: header[name] for name in bars}
    assert parsed.ids["total"]["data-ms"] == header["total"]
    body = response.get_data(as_text=True)
    assert "Rob Pike" in body and "hello from the upstream API" in body


def bar_spans(client, mode):
    """(start, end) in ms of each read's bar on the page of `mode`."""
    bars = page(client.get(f"/?mode={mode}", headers={"Accept": BROWSER})).by_class["bar"]
    return [(float(b["data-start-ms"]), float(b["data-start-ms"]) + float(b["data-ms"]))
            for b in bars if "data-source" in b]


def test_sequential_bars_follow_one_another_and_concurrent_ones_overlap(app, client):
    get_sources(app)["file"].delay_s = 0.05
    get_sources(app)["db"].delay_s = 0.05
    sequential = bar_spans(client, "sequential")
    assert all(later[0] >= earlier[1] - 0.5 for earlier, later in zip(sequential, sequential[1:]))
    concurrent = bar_spans(client, "concurrent")
    assert max(start for start, _ in concurrent) < min(end for _, end in concurrent)


def test_the_page_names_a_failing_source(app, client, tmp_path):
    get_sources(app)["file"].path = tmp_path / "missing.txt"
    response = client.get("/", headers={"Accept": BROWSER})
    parsed = page(response)
    assert response.status_code == 502
    assert any("failed" in bar["class"] for bar in parsed.by_class["bar"])
    page_text = response.get_data(as_text=True)
    assert "unavailable" in page_text and "missing.txt" not in page_text  # what, not where


@pytest.mark.parametrize("path, status, words", [
    ("/is_prime/1,x", 400, "is not an integer"),
    ("/nowhere", 404, "Not Found"),
    ("/?format=xml", 400, "format must be one of"),
])
def test_errors_are_pages_for_browsers_and_json_for_the_rest(client, path, status, words):
    for_browser = client.get(path, headers={"Accept": BROWSER})
    assert for_browser.status_code == status and words in for_browser.get_data(as_text=True)
    assert "error-message" in page(for_browser).ids
    for_client = client.get(path, headers={"Accept": "*/*"})
    assert for_client.status_code == status and words in for_client.get_json()["error"]


def test_the_page_needs_nothing_from_elsewhere(client):
    text = client.get("/", headers={"Accept": BROWSER}).get_data(as_text=True)
    assert "http://" not in text and "https://" not in text and "<script src" not in text
