"""Schemathesis against a live server over TLS: every operation of /openapi.json, a real token.

Fails on any 5xx, any answer that does not match the schema (status, content type, headers,
body) and a server that is no longer running. Bounded for the normal suite: a fixed number
of examples per operation, derandomized, so CI runs the same requests every time.
`DRIVE_FUZZ_EXAMPLES` and `DRIVE_FUZZ_SCENARIOS` raise the counts for a longer run
(README "Long runs").
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.openapi import document
from server.routes_api import server_version
from tests.helpers.server_proc import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = int(os.environ.get("DRIVE_FUZZ_EXAMPLES", "10"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FUZZ_CONFIG = {
    # Long polls answer at once, so the fuzzer does not wait 30 s for each one.
    "longpoll_min_seconds": 0.0,
    "longpoll_max_seconds": 0.2,
    # The fuzzer is one token sending requests back to back.
    "rate_per_second": 100_000.0,
    "rate_burst": 100_000,
    "login_rate_per_second": 100_000.0,
    "login_rate_burst": 100_000,
}


class Target:
    """The live server under fuzzing and a logged-in user on it."""

    def __init__(self, srv: ServerProcess) -> None:
        self.srv = srv
        srv.add_user("fuzz", "pw-fuzz")
        self.token = srv.login("fuzz", "pw-fuzz", device="fuzzer")
        self.requests = 0
        self.session = requests.Session()  # one TLS connection, not a handshake per request

    @property
    def ca_file(self) -> str:
        """The server's self-signed certificate, trusted as the only CA."""
        return str(self.srv.cert_path)

    def headers_for(self, case: schemathesis.Case) -> dict[str, str]:
        """The bearer token; `logout` gets a fresh one, so it never revokes the fuzzer's."""
        token = self.token
        if case.operation.path == "/api/v1/logout":
            token = self.srv.login("fuzz", "pw-fuzz", device="fuzzer-logout")
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    data: Path = tmp_path_factory.mktemp("fuzz") / "server-data"
    with ServerProcess(data, config=FUZZ_CONFIG) as srv:
        t = Target(srv)
        yield t
        t.session.close()
        print(f"fuzz: {t.requests} requests")
        assert srv.running(), "the server died under fuzzing"
        assert "Traceback" not in srv.log_text(), srv.log_text()[-4000:]


@pytest.fixture(scope="module")
def served(target: Target) -> None:
    """The live server serves the very document the cases below are generated from."""
    with target.srv.client() as http:
        served = http.get("/openapi.json").json()
    # A fresh copy: schemathesis may annotate the dict it was given.
    assert served == json.loads(json.dumps(document(server_version())))


# Built from the same data the server serves (checked by `served`): schemathesis' lazy
# loader (`schemathesis.pytest.from_fixture`) does not work with this pytest.
DOCUMENT = json.loads(json.dumps(document(server_version())))
schema = schemathesis.openapi.from_dict(DOCUMENT)


@hypothesis.settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
@schema.parametrize()
def test_fuzz_every_operation(case: schemathesis.Case, target: Target, served: None) -> None:
    target.requests += 1
    try:
        case.call_and_validate(
            base_url=target.srv.url,
            session=target.session,
            headers=target.headers_for(case),
            checks=CHECKS,
            verify=target.ca_file,
            timeout=30,
        )
    except requests.ConnectionError as exc:
        # A dropped connection is the server's fault until its log says otherwise.
        raise AssertionError(f"{exc}\n--- server log ---\n{target.srv.log_text()[-4000:]}") from exc
    assert target.srv.running(), "the server died"


STEPS = int(os.environ.get("DRIVE_FUZZ_SCENARIOS", "10"))


def test_fuzz_stateful_links(target: Target, served: None) -> None:
    """Sequences that follow the schema's links: a resumable upload's session id into its
    parts, a record's id and path into meta, download and revisions, a cursor into delta."""

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            target.requests += 1
            return {
                "base_url": target.srv.url,
                "session": target.session,
                "headers": target.headers_for(case),
                "verify": target.ca_file,
                "timeout": 30,
            }

        def validate_response(
            self, response: Any, case: schemathesis.Case, additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:  # fmt: skip
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)
            assert target.srv.running(), "the server died"

    Machine.run(
        settings=hypothesis.settings(
            max_examples=STEPS,
            stateful_step_count=10,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )
