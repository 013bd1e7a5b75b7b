"""schemathesis against a live server: every operation of each listener's OpenAPI document
(`GET /api-description`), with inputs that follow the document and inputs that break it.

The server must never answer 5xx for reasons of its own (not_a_server_error), and what it
answers must match its document: every check schemathesis runs by default (status codes,
content types, headers, bodies, valid input accepted, invalid input refused). Each test covers
one listener with a server of its own, so registrations cannot leak from one test to another.

What is left out, and why:
- Scaling and unregistering `echo`: generated model names are random, so these operations
  only meet unknown models (404). Aimed at echo they would start up to MAX_WORKERS worker
  processes per example; tests/test_hostile_input.py sends absurd worker counts on purpose.
- Registering anything that exists. A url naming an existing file or folder ("echo.mar", "/",
  ".") would be registered with the generated handler and up to MAX_WORKERS workers: echo's
  would start (slowly, by the hundred), an invented handler's would fail to load, which is a
  500 the document promises ("Workers failed to start") but not_a_server_error counts. Such
  urls get a suffix that names nothing (keep_urls_off_real_paths); remote urls are refused
  because allowed_urls is empty. So register meets 400/404/409 and never starts a worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from helpers import start_server

MAX_EXAMPLES = 25
SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))

# Query parameters TorchServe parses leniently: a value that is not an integer (or "true")
# means the default, and TorchServe's own tests expect 200 for `limit=abc` or `batch_size=dd`.
# The document types them as what a client should send; the server does not refuse the rest.
LENIENT_QUERY = {"limit", "next_page_token", "batch_size", "max_batch_delay", "initial_workers",
                 "synchronous", "response_timeout", "startup_timeout", "min_worker", "max_worker",
                 "timeout", "customized"}


@pytest.fixture
def server(model_store, tmp_path):
    # allowed_urls stays empty: a url schemathesis invents is never downloaded.
    server = start_server(tmp_path, model_store, ["echo=echo.mar"], enable_model_api="true",
                          default_workers_per_model=1)
    yield server
    server.stop()


def _schema(url: str):
    schema = schemathesis.openapi.from_url(f"{url}/api-description")
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    max_examples=MAX_EXAMPLES)
    return schema


@pytest.fixture
def inference_schema(server):
    return _schema(server.inference_url)


@pytest.fixture
def management_schema(server):
    return _schema(server.management_url)


@pytest.fixture
def metrics_schema(server):
    return _schema(server.metrics_url)


def _only_lenient_query_broken(case) -> bool:
    """True when the negative case broke nothing but parameters TorchServe parses leniently."""
    data = case.meta.phase.data if case.meta is not None else None
    if data is None or data.parameter_location != ParameterLocation.QUERY:
        return False
    names = {data.parameter} if data.parameter else {m.parameter for m in data.mutations}
    return bool(names) and None not in names and names <= LENIENT_QUERY


def negative_data_rejected(ctx, response, case):
    """schemathesis's negative_data_rejection, except for TorchServe's lenient parameters."""
    if _only_lenient_query_broken(case):
        return None
    return negative_data_rejection(ctx, response, case)


def aim_at_echo(case, methods: tuple[str, ...]) -> None:
    """Points about half of the valid cases at the model that exists (`echo`, version 1.0), so
    that requests reach a worker and describe finds something; random names only meet 404.
    Which half depends on the generated name, so a failure replays the same way."""
    params = case.path_parameters
    if (case.meta is None or not case.meta.generation.mode.is_positive or not params
            or "model_name" not in params or case.method.upper() not in methods):
        return
    if len(str(params["model_name"])) % 2 == 0:
        params["model_name"] = "echo"
        if "model_version" in params and len(str(params["model_version"])) % 2 == 0:
            params["model_version"] = "1.0"


def _names_a_path(store: Path, url: str) -> bool:
    try:
        return (store / url).exists() or Path(url).exists()
    except (OSError, ValueError):  # a NUL byte, a name too long
        return False


def keep_urls_off_real_paths(case, store: Path) -> None:
    """Register's url, in the query or the JSON body, never names an existing file or folder."""
    if case.method.upper() != "POST" or case.path != "/models":
        return
    for source in (case.query, case.body):
        url = source.get("url") if isinstance(source, dict) else None
        if isinstance(url, str) and url and _names_a_path(store, url):
            source["url"] = url + ".missing"


def check(case) -> None:
    excluded = [negative_data_rejection]
    if case.path.startswith("/v2/models/") and case.method.upper() == "POST":
        # KServe v2 inference: that a tensor's data holds as many elements as its shape says
        # cannot be written in JSON Schema, so a schema-valid request may still be refused (400).
        excluded.append(positive_data_acceptance)
    case.call_and_validate(
        excluded_checks=excluded,
        additional_checks=[not_a_server_error, negative_data_rejected],
        timeout=60,
    )


inference = schemathesis.pytest.from_fixture("inference_schema")
management = schemathesis.pytest.from_fixture("management_schema")
metrics = schemathesis.pytest.from_fixture("metrics_schema")


@inference.parametrize()
@SETTINGS
def test_inference_api_matches_its_document(case):
    aim_at_echo(case, ("GET", "POST", "PUT"))
    check(case)


@management.parametrize()
@SETTINGS
def test_management_api_matches_its_document(case, model_store):
    # describe and set-default only: see the module docstring for scale and unregister
    aim_at_echo(case, ("GET",) if not case.path.endswith("set-default") else ("PUT",))
    keep_urls_off_real_paths(case, model_store)
    check(case)


@metrics.parametrize()
@SETTINGS
def test_metrics_api_matches_its_document(case):
    check(case)
