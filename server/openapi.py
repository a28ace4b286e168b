"""The OpenAPI 3.1 document of the HTTP API (`GET /openapi.json`) and a plain `/docs` page.

One declaration per route, next to each other, so a new route without one is easy to spot;
`tests/server/test_server_openapi.py` compares them with the app's real route table, and
`tests/server/test_server_fuzz.py` fuzzes the live server against them. Prose lives in
docs/protocol.md; the summaries here only name what each operation does.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from server.api_schemas import (
    BLOCK_ID,
    BLOCK_IDS,
    COMMIT_ID,
    COMPONENTS,
    LIST_LIMIT,
    MODE,
    MOVE_MODE,
    MTIME_NS,
    PATH,
    Schema,
    count,
    nullable,
    obj,
    ref,
)
from server.routes_api import server_version

JSON = "application/json"
OCTET = "application/octet-stream"
STATUS_TEXT = {
    400: "Bad input (`bad_request`; also a bad X-Drive-Client header or a query string that is not "
    "UTF-8), or a folder move into its own subtree (`into_itself`), or a commit of blocks the "
    "account does not hold (`blocks_missing`, with `missing`)",
    401: "Missing, wrong, revoked or expired token (or wrong user or password)",
    404: "Not found (`not_found`), or the parent directory is missing (`no_parent`)",
    409: "Conflict: `conflict` (with `current`), `exists` or `not_empty`",
    413: "Body or file over a limit",
    416: "Range not satisfiable",
    429: "Rate limited (`rate_limited`) or too many unfinished uploads (`too_many_uploads`)",
    500: "A stored block failed to decrypt (`internal`, message 'corrupt block')",
    503: "This server cannot serve now: its database does not answer (`unavailable`)",
    507: "Over the quota (`quota_exceeded`) or the server's disk is full (`insufficient_storage`)",
}
FILE = ref("FileRecord")
OK = obj({"ok": {"const": True}})
SESSION = obj({"session_id": {"type": "string"}, "expires": {"type": "number"}})


def param(where: str, name: str, schema: Schema, *, required: bool = False) -> Schema:
    """A query, header or path parameter."""
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema}


def query(name: str, schema: Schema, *, required: bool = False) -> Schema:
    """A query parameter."""
    return param("query", name, schema, required=required)


CLIENT_HEADER = param(
    "header", "X-Drive-Client", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
)
PATH_QUERY = query("path", PATH, required=True)
BLOCK_PARAM = param("path", "block_id", BLOCK_ID)
CURSOR_QUERY = query("cursor", {"type": "string", "pattern": "^[0-9]{1,19}$"}, required=True)


def content(schema: Schema, media: str = JSON) -> dict[str, Any]:
    """A `content` map with one media type."""
    return {media: {"schema": schema}}


def binary(media: str = OCTET) -> dict[str, Any]:
    """Raw bytes."""
    return content({"type": "string", "format": "binary"}, media)


def answer(schema: Schema | None, text: str = "OK", media: str = JSON, **extra: Any) -> Schema:
    """One success response (no body when `schema` is None)."""
    out: Schema = {"description": text, **extra}
    if schema is not None:
        out["content"] = binary(media) if schema == {} else content(schema, media)
    return out


def op(
    op_id: str,
    summary: str,
    ok: Mapping[int, Schema],
    *,
    errors: Iterable[int] = (),
    params: Iterable[Schema] = (),
    body: Schema | None = None,
    body_media: str = JSON,
    auth: bool = True,
) -> Schema:
    """One operation: its parameters, body, success answers and error statuses (every error
    has the `Error` body). Authenticated ones can also answer 401 and 429; every one 400."""
    codes = {400, *errors, *((401, 429) if auth else ())}
    responses: dict[str, Any] = {str(s): r for s, r in ok.items()}
    for status in sorted(codes):
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    out: Schema = {
        "operationId": op_id,
        "summary": summary,
        "parameters": [*params, CLIENT_HEADER],
        "responses": responses,
    }
    if body is not None:
        out["requestBody"] = {
            "required": True,
            "content": binary(body_media) if body == {} else content(body, body_media),
        }
    if not auth:
        out["security"] = []
    return out


def link(op_id: str, **parameters: str) -> Schema:
    """A stateful link: call `op_id` with values taken from this answer."""
    return {"operationId": op_id, "parameters": parameters}


def record(text: str = "The entry's record", **links: Schema) -> Schema:
    """A FileRecord answer, linked to the calls that read the entry back."""
    return answer(
        FILE,
        text,
        links={
            "meta": link("meta", id="$response.body#/id"),
            "download": link("download", path="$response.body#/path"),
            "revisions": link("revisions", path="$response.body#/path"),
            **links,
        },
    )


WRITE = (404, 409, 413, 507)
"""Errors of the JSON routes that change the tree."""

_info = obj({"server": {"const": "drive"}, "version": {"type": "string"},
             "api": {"const": 1}, "fingerprint": {"type": "string"}})  # fmt: skip
_login = obj({"user": {"type": "string"}, "password": {"type": "string"}},
             {"device": {"type": "string"}})  # fmt: skip
_token = obj({"token": {"type": "string"}, "user": {"type": "string"},
              "device_id": count(), "device": {"type": "string"}})  # fmt: skip
_whoami = obj({"user": {"type": "string"}, "device": {"type": "string"},
               "device_id": count(), "quota_bytes": nullable(count()), "used_bytes": count(),
               "staged_bytes": count(), "logical_bytes": count(),
               "dedupe_saved_bytes": count(), "stored_bytes": count(),
               "archived_bytes": count()})  # fmt: skip
_trash_entry = obj({"id": count(minimum=1), "path": PATH, "kind": {"type": "string"},
                    "deleted_at": {"type": "number"}, "size": count(),
                    "device": nullable({"type": "string"})})  # fmt: skip
_keep_body = obj({"path": PATH, "revision": count(minimum=1)})
_cursor_links = {"delta": link("delta", cursor="$response.body#/cursor"),
                 "longpoll": link("longpoll", cursor="$response.body#/cursor")}  # fmt: skip
_revisions = answer(obj({"revisions": {"type": "array", "items": ref("Revision")}}))
_revision_query = query("revision", count(minimum=1))

PATHS: dict[str, dict[str, Schema]] = {
    "/api/v1/info": {"get": op(
        "info", "Server name, version and certificate fingerprint", {200: answer(_info)},
        auth=False)},
    "/api/v1/login": {"post": op(
        "login", "Log a device in: a new bearer token", {200: answer(_token)},
        body=_login, errors=(401, 413, 429), auth=False)},
    "/api/v1/logout": {"post": op("logout", "Revoke the calling token", {200: answer(OK)})},
    "/api/v1/whoami": {"get": op("whoami", "The caller, its quota and usage",
                                 {200: answer(_whoami)})},
    "/api/v1/blocks/missing": {"post": op(
        "blocks_missing", "Which of these blocks the account lacks",
        {200: answer(obj({"missing": {"type": "array", "items": BLOCK_ID}}))},
        body=obj({"ids": BLOCK_IDS}), errors=(413,))},
    "/api/v1/blocks/{block_id}": {
        "put": op("block_put", "Store one block (a wire frame)",
                  {200: answer(obj({"id": BLOCK_ID, "stored": {"const": False}}), "Present"),
                   201: answer(obj({"id": BLOCK_ID, "stored": {"const": True}}), "Stored")},
                  params=[BLOCK_PARAM], body={}, errors=(413, 507)),
        "get": op("block_get", "One block's wire frame", {200: answer({}, media=OCTET)},
                  params=[BLOCK_PARAM], errors=(404, 500)),
    },
    "/api/v1/blocks/batch": {"post": op(
        "blocks_batch", "Store many blocks (ID LENGTH FRAME records)",
        {200: answer(obj({"stored": {"type": "array", "items": {"type": "boolean"}}}))},
        body={}, errors=(413, 507))},
    "/api/v1/blocks/fetch": {"post": op(
        "blocks_fetch", "Many blocks' frames (ID LENGTH FRAME records)",
        {200: answer({}, media=OCTET)},
        body=obj({"ids": {**BLOCK_IDS, "minItems": 1, "maxItems": 64}}),
        errors=(404, 413, 500))},
    "/api/v1/meta": {"get": op(
        "meta", "One entry's record, by path, by id, or by a commit that made a version of it "
        "(that version's record: for a client that never got the commit's answer)",
        {200: record()},
        params=[query("path", PATH), query("id", count(minimum=1)),
                query("commit_id", COMMIT_ID)],
        errors=(404,))},
    "/api/v1/list": {"get": op(
        "list", "A directory's children, paged by name; the directory by path or by id",
        {200: answer(obj({"entries": {"type": "array", "items": FILE},
                          "next": nullable({"type": "string"})}),
                     links={"next": link("list", path="$request.query.path",
                                         after="$response.body#/next")})},
        params=[query("path", PATH), query("id", count(minimum=1)), query("limit", LIST_LIMIT),
                query("after", {"type": "string"})],
        errors=(404, 409))},
    "/api/v1/commit": {"post": op(
        "commit", "Commit a file version from stored blocks", {200: record()},
        body=ref("Commit"), errors=WRITE)},
    "/api/v1/commit/batch": {"post": op(
        "commit_batch", "Many commits, each on its own",
        {200: answer(obj({"results": {"type": "array", "items": {"anyOf": [
            obj({"record": FILE}), ref("Error")]}}}))},
        body=obj({"commits": {"type": "array", "items": ref("Commit"), "maxItems": 1000}}),
        errors=(413, 507))},
    "/api/v1/mkdir": {"post": op(
        "mkdir", "Make a directory", {200: record()},
        body=obj({"path": PATH}, {"mode": MODE, "parent_id": nullable(count())}),
        errors=WRITE)},
    "/api/v1/symlink": {"post": op(
        "symlink", "Make a symbolic link", {200: record()},
        body=obj({"path": PATH, "target": {"type": "string", "minLength": 1}},
                 {"parent_id": nullable(count())}), errors=WRITE)},
    "/api/v1/setattr": {"post": op(
        "setattr", "Change mode or mtime", {200: record()},
        body=obj({"path": PATH}, {"mode": MODE, "mtime_ns": MTIME_NS}), errors=WRITE)},
    "/api/v1/move": {"post": op(
        "move", "Rename or move an entry (atomic)", {200: record()},
        body=obj({"from": PATH, "to": PATH},
                 {"mode": MOVE_MODE, "src_rev": nullable(count()), "dst_rev": nullable(count()),
                  "src_id": nullable(count()), "dst_id": nullable(count()),
                  "dst_parent_id": nullable(count())}),
        errors=WRITE)},
    "/api/v1/delete": {"post": op(
        "delete", "Move an entry to the trash", {200: answer(obj({"deleted": FILE}))},
        body=obj({"path": PATH}, {"recursive": {"type": "boolean"},
                                  "base_rev": nullable(count()), "id": nullable(count())}),
        errors=WRITE)},
    "/api/v1/editing": {"post": op(
        "editing", "Journal that a device is editing a file", {200: answer(OK)},
        body=obj({"path": PATH}), errors=WRITE)},
    "/api/v1/revisions": {"get": op(
        "revisions", "A file's kept revisions, newest first", {200: _revisions},
        params=[PATH_QUERY, query("limit", count(10_000, minimum=1))], errors=(404,))},
    "/api/v1/restore": {"post": op(
        "restore", "Bring a revision back as a new one", {200: record()},
        body=obj({"path": PATH, "revision": count(minimum=1)}), errors=WRITE)},
    "/api/v1/keep": {"post": op(
        "keep", "Mark a revision kept: thinning never removes it",
        {200: answer(ref("Revision"))}, body=_keep_body, errors=(404,))},
    "/api/v1/unkeep": {"post": op(
        "unkeep", "Take a revision's keep mark away", {200: answer(ref("Revision"))},
        body=_keep_body, errors=(404,))},
    "/api/v1/trash": {"get": op(
        "trash", "Deleted entries, newest first",
        {200: answer(obj({"entries": {"type": "array", "items": _trash_entry}}))})},
    "/api/v1/undelete": {"post": op(
        "undelete", "Bring an entry back from the trash (by id, or the newest from a path)",
        {200: record()},
        body={"anyOf": [obj({"path": PATH}, {"id": nullable(count(minimum=1))}),
                        obj({"id": count(minimum=1)})]}, errors=WRITE)},
    "/api/v1/cursor": {"get": op(
        "cursor", "The journal's head",
        {200: answer(obj({"cursor": {"type": "string"}}), links=_cursor_links)})},
    "/api/v1/delta": {"get": op(
        "delta", "What changed since a cursor",
        {200: answer(obj({"entries": {"type": "array", "items": ref("Change")},
                          "cursor": {"type": "string"}, "has_more": {"type": "boolean"},
                          "reset": {"type": "boolean"}}), links=_cursor_links)},
        params=[CURSOR_QUERY, query("limit", LIST_LIMIT)])},
    "/api/v1/longpoll": {"get": op(
        "longpoll", "Wait until something changes after a cursor",
        {200: answer(obj({"changes": {"type": "boolean"}, "backoff": nullable(count())}))},
        params=[CURSOR_QUERY, query("timeout", count(86_400))])},
    "/metrics": {"get": op(
        "metrics", "Prometheus metrics",
        {200: answer({"type": "string"}, media="text/plain")}, auth=False)},
    "/healthz": {"get": op(
        "healthz", "Whether this server can serve (its database answers)",
        {200: answer(OK)}, errors=(503,), auth=False)},
    "/files/upload": {"post": op(
        "upload", "Upload a whole file (media) or start a resumable upload",
        {200: answer({"anyOf": [FILE, SESSION]}, "A new revision, or a session started",
                     links={"part": link("upload_part",
                                         session_id="$response.body#/session_id")}),
         201: record("A new file")},
        params=[PATH_QUERY, query("uploadType", {"enum": ["media", "resumable"]}),
                query("base_rev", count()),
                param("header", "X-Upload-Content-Length", {"type": "string"})],
        body={}, errors=WRITE)},
    "/files/upload/sessions/{session_id}": {"put": op(
        "upload_part", "Send a part of a resumable upload",
        {200: record("Finished: a new revision"), 201: record("Finished: a new file"),
         308: answer(None, "Incomplete; Range says what arrived")},
        params=[param("path", "session_id", {"type": "string"}),
                param("header", "Content-Range", {"type": "string"}, required=True)],
        body={}, errors=WRITE)},
    "/files/download": {"get": op(
        "download", "A file's content (Range supported)",
        {200: answer({}, media=OCTET), 206: answer({}, "Part of it", media=OCTET)},
        params=[PATH_QUERY, _revision_query, param("header", "Range", {"type": "string"})],
        errors=(404, 416, 500))},
    "/files/list_revisions": {"get": op(
        "list_revisions", "The same as /api/v1/revisions", {200: _revisions},
        params=[PATH_QUERY, query("limit", count(10_000, minimum=1))], errors=(404,))},
    "/files/restore": {"post": op(
        "files_restore", "The same as /api/v1/restore, from the query", {200: record()},
        params=[PATH_QUERY, {**_revision_query, "required": True}], errors=WRITE)},
    "/openapi.json": {"get": op(
        "openapi", "This document", {200: answer({"type": "object"})}, auth=False)},
    "/docs": {"get": op(
        "docs", "A page listing the operations", {200: answer({"type": "string"},
                                                              media="text/html")},
        auth=False)},
}  # fmt: skip


def document(version: str) -> dict[str, Any]:
    """The whole OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "drive",
            "version": version,
            "description": "The HTTP API of the drive server; docs/protocol.md has the rules.",
        },
        "paths": PATHS,
        "security": [{"bearer": []}],
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                f"E{status}": {"description": text, "content": content(ref("Error"))}
                for status, text in STATUS_TEXT.items()
            },
        },
    }


def docs_page(doc: Mapping[str, Any]) -> str:
    """A plain HTML list of the operations (no scripts, nothing fetched from elsewhere)."""
    rows = []
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}"
                f"</code></td><td>{html.escape(operation['summary'])}</td></tr>"
            )
    return (
        "<!doctype html><meta charset=utf-8><title>drive API</title>"
        "<h1>drive API</h1><p>The machine-readable description is "
        "<a href=/openapi.json>/openapi.json</a> (OpenAPI 3.1).</p>"
        f"<table>{''.join(rows)}</table>"
    )


async def openapi_json(request: Request) -> Response:
    body = json.dumps(document(server_version()), separators=(",", ":"))
    return Response(body, media_type=JSON)


async def docs(request: Request) -> Response:
    return HTMLResponse(docs_page(document(server_version())))


ROUTES = [
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
]
