"""Schemathesis fuzzing of the server, driven by its own OpenAPI schema (FastAPI publishes it).

Bounded: a small context (max_model_len 48) keeps every generated request cheap, and a fixed
number of examples per operation keeps the run to about a minute on 2 shared cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import Server, run_server

from xyserve.config import EngineConfig

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

EXAMPLES = 50  # per operation
STATUS_COUNTS: dict[int, int] = {}  # status code -> responses, printed after the run (-s)


@pytest.fixture(scope="module")
def fuzz_server(tiny_llama: Path) -> Iterator[Server]:
    config = EngineConfig(
        model=str(tiny_llama),
        served_model_name="tiny",
        max_model_len=48,
        max_num_batched_tokens=64,
        max_n=4,
        max_request_body_bytes=256 * 1024,
        device="cpu",
    )
    with run_server(config) as srv:
        yield srv
        srv.assert_clean()  # after the whole run: nothing running, no block held
    print(f"\nschemathesis: {sum(STATUS_COUNTS.values())} requests, by status {STATUS_COUNTS}")


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Server):  # noqa: ANN201
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples every run: a failure reproduces
)
def test_no_server_errors(case, fuzz_server: Server) -> None:  # noqa: ANN001
    response = case.call(base_url=fuzz_server.url, timeout=30)
    STATUS_COUNTS[response.status_code] = STATUS_COUNTS.get(response.status_code, 0) + 1
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500, response.text
