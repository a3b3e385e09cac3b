"""REST API against a real server: calls, idempotency keys, SQL, schema, health, errors."""

from __future__ import annotations

import base64
from pathlib import Path

import server_app
from server_support import Running, http, running

from voicehub.server.system import ANONYMOUS_IDENTITY


async def call(srv: Running, name: str, body: object = None, **headers: str) -> tuple[int, dict]:
    return await http("POST", f"{srv.http_url}/v1/reducers/{name}", body, headers)


async def sql(srv: Running, query: str, params: object = None) -> tuple[int, dict]:
    return await http("POST", f"{srv.http_url}/v1/sql", {"sql": query, "params": params})


async def test_health_and_readiness(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        assert await http("GET", srv.http_url + "/healthz") == (200, {"status": "ok"})
        status, body = await http("GET", srv.http_url + "/readyz")
        assert status == 200 and body["status"] == "ready"
        srv.node.hub.draining = True
        status, body = await http("GET", srv.http_url + "/readyz")
        assert status == 503 and body["error"]["code"] == "not_ready"
        srv.node.hub.draining = False


async def test_call_answers_after_durable_commit(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        status, body = await call(srv, "shout", {"call_id": "c1", "text": "hello"})
        assert status == 200, body
        assert body["value"] == 1
        assert srv.node.db.gate.durable >= body["offset"]
        status, body2 = await call(srv, "shout", ["c1", "again"])  # positional arguments
        assert status == 200 and body2["offset"] == body["offset"] + 1
        status, res = await sql(srv, "SELECT id, text FROM segment WHERE call_id = $1", ["c1"])
        assert status == 200
        assert res["columns"] == ["id", "text"]
        assert sorted(map(tuple, res["rows"])) == [(1, "hello"), (2, "again")]
        assert res["offset"] >= body2["offset"]


async def test_error_statuses_and_codes(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        cases = [
            (await call(srv, "nope"), 404, "no_such_reducer"),
            (await call(srv, "shout", {"call_id": "c"}), 400, "invalid_arguments"),
            (await call(srv, "shout", {"call_id": 1, "text": "x"}), 400, "invalid_arguments"),
            (
                await call(srv, "shout", {"call_id": "c", "text": "x", "z": 1}),
                400,
                "invalid_arguments",
            ),
            (await call(srv, "shout", b"{not json"), 400, "invalid_request"),
            (await call(srv, "shout", "a string"), 400, "invalid_request"),
            (await call(srv, "fail", {"why": "no agent"}), 422, "reducer_error"),
            (await call(srv, "twice", {"name": "t"}), 409, "constraint_violation"),
            (await call(srv, "boom"), 500, "reducer_failed"),
            (await call(srv, "voicehub_expire", [0, 1, []]), 404, "no_such_reducer"),
            (
                await call(srv, "shout", ["c", "x"], Authorization="Bearer nope"),
                401,
                "unauthorized",
            ),
            (await sql(srv, "SELECT * FROM nowhere"), 400, "sql_error"),
            (await sql(srv, "SELECT ROW_NUMBER() OVER () FROM segment"), 400, "unsupported_sql"),
            (await sql(srv, "DELETE FROM segment"), 400, "sql_error"),
            (await sql(srv, "SELECT * FROM __requests__"), 400, "sql_error"),
            (await http("POST", srv.http_url + "/v1/sql", {"query": "x"}), 400, "invalid_request"),
            (await http("GET", srv.http_url + "/v1/nothing"), 404, "not_found"),
            (await http("GET", srv.http_url + "/v1/sql"), 405, "method_not_allowed"),
        ]
        for (status, body), want_status, want_code in cases:
            assert status == want_status, (want_code, body)
            assert body["error"]["code"] == want_code, body
            assert body["error"]["message"]
        # failed calls left no trace
        status, res = await sql(srv, "SELECT name FROM tally")
        assert res["rows"] == []


async def test_storage_failure_is_503(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        srv.node.db.gate.fail(OSError("disk on fire"))
        status, body = await call(srv, "shout", ["c", "x"])
        assert status == 503 and body["error"]["code"] == "storage_failed"
        status, body = await http("GET", srv.http_url + "/readyz")
        assert status == 503


async def test_idempotency_key_runs_once(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        before = server_app.RUNS["bump"]
        first = await call(srv, "bump", {"name": "a"}, **{"Idempotency-Key": "k-1"})
        again = await call(srv, "bump", {"name": "a"}, **{"Idempotency-Key": "k-1"})
        via_query = await http(
            "POST", srv.http_url + "/v1/reducers/bump?request_id=k-1", {"name": "a"}
        )
        assert first[0] == again[0] == via_query[0] == 200
        assert first[1] == {"offset": first[1]["offset"], "value": 1, "request_id": "k-1"}
        assert again[1] == {**first[1], "replayed": True}
        assert via_query[1] == again[1]
        assert server_app.RUNS["bump"] == before + 1
        other = await call(srv, "bump", {"name": "a"}, **{"Idempotency-Key": "k-2"})
        assert other[1]["value"] == 2
        conflict = await call(srv, "shout", ["c", "x"], **{"Idempotency-Key": "k-1"})
        assert conflict[0] == 409 and conflict[1]["error"]["code"] == "request_id_conflict"
        row = srv.node.db.stores["__requests__"].get((ANONYMOUS_IDENTITY, '"k-1"'))
        assert row is not None and row.commit_offset == first[1]["offset"]


async def test_failed_call_outcome_is_replayed_without_running(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        before = server_app.RUNS["fail"]
        h = {"Idempotency-Key": "f-1"}
        s1, b1 = await call(srv, "fail", {"why": "busy"}, **h)
        s2, b2 = await call(srv, "fail", {"why": "busy"}, **h)
        assert s1 == s2 == 422
        assert b1 == {"error": {"code": "reducer_error", "message": "busy"}}
        assert b2 == {**b1, "replayed": True}
        assert server_app.RUNS["fail"] == before + 1
        # argument errors are not outcomes: fixing the arguments and retrying runs it
        s3, _ = await call(srv, "shout", {"call_id": "c"}, **{"Idempotency-Key": "f-2"})
        s4, _ = await call(
            srv, "shout", {"call_id": "c", "text": "x"}, **{"Idempotency-Key": "f-2"}
        )
        assert (s3, s4) == (400, 200)


async def test_request_ids_expire_after_the_window(tmp_path: Path) -> None:
    async with running(tmp_path, idempotency_window_s=60) as srv:
        h = {"Idempotency-Key": "old"}
        _, b1 = await call(srv, "bump", {"name": "w"}, **h)
        assert b1["value"] == 1
        hub = srv.node.hub
        assert hub.expire_once() == 0  # still inside the window
        assert hub.expire_once(now=srv.node.db.timestamp + 61_000_000) == 1
        _, b2 = await call(srv, "bump", {"name": "w"}, **h)
        assert "replayed" not in b2 and b2["value"] == 2


async def test_bytes_travel_as_base64(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        raw = bytes(range(256))
        status, body = await call(
            srv, "put_blob", {"id": 1, "data": base64.b64encode(raw).decode()}
        )
        assert status == 200 and body["value"] == 256
        status, body = await call(srv, "put_blob", {"id": 2, "data": "%%%"})
        assert status == 400 and body["error"]["code"] == "invalid_arguments"
        _, res = await sql(srv, "SELECT data FROM blob")
        assert base64.b64decode(res["rows"][0][0]) == raw
        assert res["types"] == ["bytes"]


async def test_schema_lists_user_tables_and_reducers(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        status, body = await http("GET", srv.http_url + "/v1/schema")
        assert status == 200
        assert set(body["modules"]) == {"app", "voice"}
        tables = {t["name"]: t for t in body["tables"]}
        assert {"segment", "tally", "blob", "calls", "transcript_segments"} <= set(tables)
        assert not set(tables) & {"__requests__", "__sessions__", "audit_log", "auth_audit"}
        assert [c["name"] for c in tables["segment"]["columns"]] == ["id", "call_id", "text"]
        reducers = {r["name"]: r for r in body["reducers"]}
        assert "voicehub_expire" not in reducers and "shout" in reducers
        assert reducers["bump"]["params"][1] == {
            "name": "by",
            "type": "int64",
            "has_default": True,
            "default": 1,
        }
