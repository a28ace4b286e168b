"""The OpenAPI document names exactly the app's routes, and the live server serves it."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from server.app import api_routes, assemble
from server.metrics import Metrics
from server.openapi import PATHS, document
from tests.helpers.server_proc import ServerProcess


def _app_operations() -> set[tuple[str, str]]:
    """(METHOD, path) of every route of the assembled app; HEAD is implied by GET."""
    app = assemble(api_routes(), Metrics(), None)
    starlette = app.app  # type: ignore[attr-defined]  # DriveMiddleware wraps the app
    assert isinstance(starlette, Starlette)
    ops: set[tuple[str, str]] = set()
    for route in starlette.routes:
        assert isinstance(route, Route), route
        assert route.methods, route.path
        ops.update((m, route.path) for m in route.methods if m != "HEAD")
    return ops


def test_schema_names_every_route_and_no_other() -> None:
    documented = {(m.upper(), path) for path, methods in PATHS.items() for m in methods}
    real = _app_operations()
    assert sorted(real - documented) == [], "routes missing from server/openapi.py"
    assert sorted(documented - real) == [], "server/openapi.py names routes that do not exist"


def test_operations_are_complete() -> None:
    ops = [op for methods in document("0")["paths"].values() for op in methods.values()]
    ids = {op["operationId"] for op in ops}
    assert len(ids) == len(ops), "operationIds are unique"
    for op in ops:
        assert op["summary"], op["operationId"]
        assert any(s.startswith("2") for s in op["responses"]), op["operationId"]
        for response in op["responses"].values():
            for target in response.get("links", {}).values():
                assert target["operationId"] in ids, (op["operationId"], target)


def test_live_server_serves_schema_and_docs(server: ServerProcess) -> None:
    with server.client() as http:
        r = http.get("/openapi.json")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
        doc = r.json()
        assert doc["openapi"] == "3.1.0"
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert set(doc["paths"]) == set(PATHS)
        page = http.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "/api/v1/commit" in page.text
        assert "<script" not in page.text
