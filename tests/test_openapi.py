"""The OpenAPI document: valid OpenAPI 3.1, complete, and true of a real gunicorn under fuzzing."""
import json
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

import config
import openapi

# Bounded fuzzing: at most this many generated requests per operation and generation mode
# (schema-valid and schema-invalid), to 127.0.0.1 only.
FUZZ_EXAMPLES = 60
# A request against the document is refused with a 4xx: 413 (too many numbers or digits) is one
# of them here, beside schemathesis's usual 400, 404, 405 and 422.
FUZZ_CONFIG = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {
    "expected-statuses": ["400", "404", "405", "413", "414", "422"]}}})
_sent = []


def test_the_document_is_valid_openapi_3_1(client):
    document = client.get("/openapi.json").get_json()
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_the_document_names_every_route_and_method_and_no_other(app):
    routes = {(re.sub(r"<(\w+)>", r"{\1}", rule.rule), method.lower())
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, operations in openapi.document(app.config)["paths"].items()
                  for method in operations}
    assert documented == routes


def test_the_limits_are_the_config_s(app):
    document = openapi.document({**app.config, "PRIME_MAX_ITEMS": 7, "PRIME_MAX_DIGITS": 9})
    body = document["paths"]["/is_prime"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["maxItems"] == 7 and "{1,9}" in body["schema"]["items"]["anyOf"][1]["pattern"]


@pytest.fixture(scope="module")
def fuzzed(serve_module):
    """The schema as a real gunicorn serves it, with no simulated latency."""
    service = serve_module(FILE_DELAY_MS=0, DB_DELAY_MS=0)
    yield schemathesis.openapi.from_url(service.url + "/openapi.json", config=FUZZ_CONFIG)
    print(f"\nschemathesis sent {len(_sent)} requests; statuses: "
          f"{ {status: _sent.count(status) for status in sorted(set(_sent))} }")


def fuzz_runs():
    """(method, path, mode) of every operation, from the document as the default config writes
    it: schema-valid requests for each, schema-invalid ones where there is input to break (the
    X-Request-ID header takes any string)."""
    for path, operations in openapi.document(config.settings())["paths"].items():
        for method, operation in operations.items():
            takes_input = len(operation["parameters"]) > 1 or "requestBody" in operation
            for mode in GenerationMode:
                if mode == GenerationMode.POSITIVE or takes_input:
                    yield method, path, mode


@pytest.mark.slow
@pytest.mark.fuzz
@pytest.mark.parametrize("method, path, mode", list(fuzz_runs()))
def test_fuzzed_requests_get_no_server_error_and_conform_to_the_document(fuzzed, method, path,
                                                                          mode):
    # Hypothesis drives schemathesis's strategy here, rather than schemathesis's pytest plugin,
    # which pytest 9.2 no longer supports (it sets Function._nodeid).
    @given(case=fuzzed[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        _sent.append(case.call_and_validate(timeout=10, excluded_checks=excluded).status_code)

    # GET /is_prime/ (no numbers) is documented as always a 400, so no request to it is valid.
    excluded = [positive_data_acceptance] if path == "/is_prime/" else []

    fuzz()


@pytest.mark.slow
@pytest.mark.fuzz
def test_a_request_line_too_long_gets_a_json_414_as_documented(fuzzed):
    case = fuzzed["/is_prime/{numbers}"]["get"].Case(path_parameters={"numbers": "7," * 4500})
    response = case.call(timeout=10)
    assert response.status_code == 414
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


def test_the_route_serves_the_document_read_at_start_with_the_app_s_limits(client):
    app_config = client.application.config
    assert client.get("/openapi.json").get_json() == openapi.document(app_config)


def test_the_document_on_disk_is_the_contract_with_the_default_limits_in_its_schemas():
    on_disk = json.loads(openapi.PATH.read_text(encoding="utf-8"))
    with_defaults = openapi.document(config.settings())
    assert json.dumps(on_disk).count("{PRIME_MAX_ITEMS}") == 2
    assert on_disk["paths"]["/is_prime"] == json.loads(
        json.dumps(with_defaults["paths"]["/is_prime"]))
