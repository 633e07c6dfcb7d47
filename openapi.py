"""The OpenAPI 3.1 document of the service, served at /openapi.json.

Written by hand beside the routes it describes, with the limits taken from the running config.
tests/test_openapi.py validates it with openapi-spec-validator and checks that it names every
route; schemathesis fuzzes a real gunicorn from it and every response must conform.
"""

REF = "#/components/"
# Bodies the service writes itself; a browser (Accept: text/html) gets a page instead.
HTML = {"text/html": {"schema": {"type": "string"}}}


def document(config):
    """Return the document as a dict, for the limits in `config`."""
    max_items, max_digits = config["PRIME_MAX_ITEMS"], config["PRIME_MAX_DIGITS"]
    # Leading zeros do not count towards the digits (007 is 7).
    integer = rf"[+-]?0*[0-9]{{1,{max_digits}}}"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Fast sync Flask with thread and process pools",
            "version": "1.0.0",
            "description": "GET / reads a file, a SQL database and an HTTP API concurrently; "
                           "/is_prime checks integers with GMP, big batches on a process pool.",
        },
        "paths": {
            "/": {"get": _operation(
                "Read the three sources", "index",
                parameters=[_ref("parameters", "ReadMode"), _ref("parameters", "Format")],
                responses={
                    "200": _response("All three reads answered; a browser gets the page with "
                                     "their waterfall", "Reads", html=True, timing=True),
                    "400": _ref("responses", "BadRequest"),
                    "502": _response("A source failed: its result is null and `errors` names it",
                                     "Reads", html=True, timing=True),
                    "503": _ref("responses", "Unavailable"),
                    "504": _response("A source ran out of time: as 502", "Reads", html=True,
                                     timing=True),
                })},
            "/is_prime/": {"get": _operation(
                "No numbers: always a 400", "is_prime_empty",
                responses={"400": _ref("responses", "BadRequest"),
                           "503": _ref("responses", "Unavailable")})},
            "/is_prime/{numbers}": {"get": _operation(
                "Check the comma-separated integers of the path", "is_prime_get",
                parameters=[{
                    "name": "numbers", "in": "path", "required": True,
                    "description": f"up to {max_items} integers of up to {max_digits} digits, "
                                   "comma-separated; the request line may not pass gunicorn's "
                                   "LIMIT_REQUEST_LINE (414)",
                    "schema": {"type": "string",
                               "pattern": rf"^{integer}(,{integer}){{0,{max_items - 1}}}$"},
                }, _ref("parameters", "PrimeMode")],
                responses=_prime_responses(uri_too_long=True))},
            "/is_prime": {"post": _operation(
                "Check a JSON list of integers, for batches too long for a URL", "is_prime_post",
                parameters=[_ref("parameters", "PrimeMode")],
                requestBody={"required": True, "content": {"application/json": {"schema": {
                    "type": "array", "minItems": 1, "maxItems": max_items,
                    "items": {"anyOf": [{"type": "integer"},
                                        {"type": "string", "pattern": f"^{integer}$"}]},
                }}}},
                responses=_prime_responses())},
            "/healthz": {"get": _operation(
                "Liveness: the worker answers, no I/O", "healthz",
                responses={"200": _response("Alive", "Health")})},
            "/readyz": {"get": _operation(
                "Readiness: both pools run a task and every source answers", "readyz",
                responses={"200": _response("Ready", "Readiness"),
                           "503": _response("Not ready: `checks` names what failed",
                                            "Readiness")})},
            "/metrics": {"get": _operation(
                "Prometheus metrics of all workers", "metrics",
                responses={"200": {"description": "Prometheus text format",
                                   "content": {"text/plain": {"schema": {"type": "string"}}}}})},
            "/openapi.json": {"get": _operation(
                "This document", "openapi",
                responses={"200": {"description": "OpenAPI 3.1",
                                   "content": {"application/json": {"schema": {
                                       "type": "object"}}}}})},
        },
        "components": {
            "parameters": {
                "RequestId": {
                    "name": "X-Request-ID", "in": "header", "required": False,
                    "description": "Echoed and logged when it is 1-128 characters of "
                                   "A-Za-z0-9._:- ; otherwise, or when absent, a new one is made",
                    "schema": {"type": "string"},
                },
                "ReadMode": _enum_parameter("mode", ["concurrent", "sequential"],
                                            "Read the sources at the same time or one after "
                                            "another"),
                "Format": _enum_parameter("format", ["auto", "json", "html"],
                                          "auto: by the Accept header (a browser gets the page)"),
                "PrimeMode": _enum_parameter("mode", ["auto", "inline", "process"],
                                             "Where to check: by estimated cost, in the request "
                                             "thread, or on the process pool"),
            },
            "headers": {
                "RequestId": {"description": "The request's id",
                              "schema": {"type": "string"}},
                "RetryAfter": {"description": "Seconds to wait before retrying",
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                "ServerTiming": {"description": "Each read's duration and the total, in ms",
                                 "schema": {"type": "string"}},
            },
            "responses": {
                "BadRequest": _response("The request was malformed: `error` says how", "Error",
                                        html=True),
                "TooLarge": _response(f"More than {max_items} numbers, one of more than "
                                      f"{max_digits} digits, a body over the size those allow, "
                                      "or more CPU than the deadline leaves on the cores the "
                                      "batch may use", "Error", html=True),
                "Unavailable": _response("Saturated, or a pool process died: retry after "
                                         "Retry-After", "Error", html=True, retry=True),
                "TimedOut": _response("Not finished within REQUEST_TIMEOUT_S", "Error",
                                      html=True),
                "OtherError": _response("Any other error, such as 404 for an unknown path, 405 "
                                        "for a wrong method, 408 for a request that took too "
                                        "long to arrive, 431 for a head over "
                                        "READ_MAX_HEAD_BYTES", "Error", html=True),
            },
            "schemas": {
                "Error": {
                    "type": "object", "additionalProperties": False,
                    "required": ["error", "status"],
                    "properties": {"error": {"type": "string"},
                                   "status": {"type": "integer", "minimum": 400,
                                              "maximum": 599}},
                },
                "Reads": {
                    "type": "object", "additionalProperties": False,
                    "required": ["result_file", "result_db", "result_api", "mode", "timings_ms"],
                    "properties": {
                        "result_file": {"type": ["string", "null"]},
                        "result_db": {"anyOf": [_ref("schemas", "Quote"), {"type": "null"}]},
                        "result_api": {"type": ["object", "null"]},
                        "mode": {"enum": ["concurrent", "sequential"]},
                        "timings_ms": {
                            "type": "object", "additionalProperties": False,
                            "required": ["file", "db", "api", "total"],
                            "properties": {key: {"type": "number", "minimum": 0}
                                           for key in ("file", "db", "api", "total")},
                        },
                        "errors": {
                            "type": "object", "minProperties": 1,
                            "propertyNames": {"enum": ["file", "db", "api"]},
                            "additionalProperties": {"type": "string"},
                        },
                    },
                },
                "Quote": {
                    "type": "object", "required": ["id", "author", "text"],
                    "properties": {"id": {"type": "integer"}, "author": {"type": "string"},
                                   "text": {"type": "string"}},
                },
                "PrimeAnswers": {
                    "type": "object", "minProperties": 1,
                    "description": "Canonical decimal of each distinct number, in request "
                                   "order: is it prime",
                    "propertyNames": {"pattern": "^(0|-?[1-9][0-9]*)$"},
                    "additionalProperties": {"type": "boolean"},
                },
                "Health": {
                    "type": "object", "required": ["status"],
                    "properties": {"status": {"const": "ok"}},
                },
                "Readiness": {
                    "type": "object", "required": ["status", "checks"],
                    "properties": {"status": {"enum": ["ready", "unavailable"]},
                                   "checks": {"type": "object",
                                              "additionalProperties": {"type": "string"}}},
                },
            },
        },
    }


def _operation(summary, operation_id, responses, parameters=(), **fields):
    return {"summary": summary, "operationId": operation_id,
            "parameters": [*parameters, _ref("parameters", "RequestId")],
            "responses": {**responses, "default": _ref("responses", "OtherError")}, **fields}


def _prime_responses(uri_too_long=False):
    responses = {
        "200": _response("Each number: prime or not", "PrimeAnswers"),
        "400": _ref("responses", "BadRequest"),
        "413": _ref("responses", "TooLarge"),
        "502": _response("CPU_EXECUTOR is a Dask cluster whose workers cannot run the check: "
                         "`error` says why", "Error", html=True),
        "503": _ref("responses", "Unavailable"),
        "504": _ref("responses", "TimedOut"),
    }
    if uri_too_long:
        responses["414"] = {"description": "The request line is longer than LIMIT_REQUEST_LINE: "
                                           "gunicorn's own answer, before the app",
                            "content": {"text/html": {"schema": {"type": "string"}}}}
    return responses


def _response(description, schema, html=False, timing=False, retry=False):
    headers = {"X-Request-ID": _ref("headers", "RequestId")}
    if timing:
        headers["Server-Timing"] = _ref("headers", "ServerTiming")
    if retry:
        headers["Retry-After"] = _ref("headers", "RetryAfter")
    content = {"application/json": {"schema": _ref("schemas", schema)}}
    return {"description": description, "headers": headers,
            "content": {**content, **(HTML if html else {})}}


def _enum_parameter(name, values, description):
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"enum": values, "default": values[0]}}


def _ref(kind, name):
    return {"$ref": f"{REF}{kind}/{name}"}
