"""The OpenAPI 3.1 contract of the service: the document openapi.json, served at /openapi.json.

The contract is kept as a document, as the field keeps it, and read once at start. It states the
limits of /is_prime twice: in its descriptions as {PRIME_MAX_ITEMS} and {PRIME_MAX_DIGITS}, and in
three schema fields (the numbers' patterns, the body's maxItems), where it holds the defaults;
`document` puts the running config's limits in both. tests/test_openapi.py validates it with
openapi-spec-validator and checks that it names every route; schemathesis fuzzes a real gunicorn
from it and every response must conform.
"""
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, current_app

PATH = Path(__file__).with_name("openapi.json")


def init_app(app: Flask) -> None:
    """Give `app` its document, with its config's limits, for get_document."""
    app.extensions["openapi"] = document(app.config)


def get_document(app: Flask | None = None) -> dict[str, Any]:
    """The document of `app`, by default of the app handling this request."""
    return (app or current_app).extensions["openapi"]


def document(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return the document as a dict, with the limits in `config`."""
    max_items, max_digits = config["PRIME_MAX_ITEMS"], config["PRIME_MAX_DIGITS"]
    text = PATH.read_text(encoding="utf-8")
    doc = json.loads(text.replace("{PRIME_MAX_ITEMS}", str(max_items))
                         .replace("{PRIME_MAX_DIGITS}", str(max_digits)))
    # Leading zeros do not count towards the digits (007 is 7).
    integer = rf"[+-]?0*[0-9]{{1,{max_digits}}}"
    numbers = doc["paths"]["/is_prime/{numbers}"]["get"]["parameters"][0]["schema"]
    numbers["pattern"] = rf"^{integer}(,{integer}){{0,{max_items - 1}}}$"
    body = doc["paths"]["/is_prime"]["post"]["requestBody"]["content"]["application/json"]
    body["schema"]["maxItems"] = max_items
    body["schema"]["items"]["anyOf"][1]["pattern"] = f"^{integer}$"
    return doc
