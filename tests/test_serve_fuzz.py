"""Property-based fuzzing of ``/invocations`` on a real ``ckptsel serve`` process (hypothesis).

One server for the module (the fixtures of test_serve.py). Every answer must be a 4xx with a
JSON or text message, or a 200 whose probabilities equal the exported predictor's run in this
process on the same pairs; never a 5xx; ``/ping`` answers after every request.

Valid rows: random finite numbers (or null, meaning missing) and random category strings (seen
or unseen), in each of MLflow's four JSON request forms. Bad requests: a valid row with one
column dropped or given a value of the wrong type, NaN or an infinity; random JSON documents;
random bytes; random content types; empty bodies; JSON nested 100,000 deep; a 20 MB request
(200 answered exactly) and a body over the 64 MiB limit (413).

What MLflow decides before ckptsel's code runs (documented in ckptsel/serving.py): it drops
columns the signature does not name (a row with an extra column is scored without it), answers
400 for values it cannot convert to the signature's types, and reads JSON booleans in a numeric
column as 0.0 and 1.0 (scored like those numbers). The two requests it answered 500 (no
Content-Type, JSON nested too deeply) are stopped by ckptsel's RequestGuard.
"""

from __future__ import annotations

import http.client
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_serve import pairs, predictor, server, trained  # noqa: F401  (module fixtures, one server)

pytestmark = pytest.mark.slow

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


def post(base: str, body: bytes, content_type: str | None = "application/json",
         timeout: float = 120) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {"Content-Type": content_type} if content_type is not None else {}
        conn.request("POST", "/invocations", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def ping(base: str) -> int:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/ping")
        return conn.getresponse().status
    finally:
        conn.close()


def expected_probs(predictor, records: list[dict]) -> np.ndarray:
    """The in-process predictor on the same rows: null numbers are NaN (missing), categories as sent."""
    from ckptsel.store import FeatureFrame

    schema = predictor.schema_
    frames = []
    for side in ("a", "b"):
        num = np.array([[np.nan if r[f"{side}.{f}"] is None else float(r[f"{side}.{f}"]) for f in schema.numeric]
                        for r in records], dtype=np.float64).reshape(len(records), len(schema.numeric))
        cat = np.empty((len(records), len(schema.categorical)), dtype=object)
        for j, c in enumerate(schema.categorical):
            cat[:, j] = [r[f"{side}.{c}"] for r in records]
        frames.append(FeatureFrame([f"{side}{i}" for i in range(len(records))], list(schema.numeric), num,
                                   list(schema.categorical), cat))
    return predictor.predict_proba(*frames)


def check_answer(server, status: int, body: bytes) -> None:
    assert status < 500, f"{status}: {body[:500]!r}"
    if status >= 400:
        assert body.strip(), f"{status} without a message"
    assert ping(server) == 200


def as_form(records: list[dict], form: str) -> dict:
    columns = list(records[0])
    if form == "dataframe_split":
        return {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in records]}}
    if form == "dataframe_records":
        return {"dataframe_records": records}
    if form == "inputs_records":
        return {"inputs": records}
    return {"inputs": {c: [r[c] for r in records] for c in columns}}


FORMS = st.sampled_from(["dataframe_split", "dataframe_records", "inputs_records", "inputs_columns"])
NUMBER = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64),
                   st.floats(min_value=-1e3, max_value=1e3), st.integers(-10**6, 10**6), st.none())
CATEGORY = st.one_of(st.sampled_from(["web", "code", "books"]), st.text(max_size=20))


@st.composite
def valid_records(draw, schema, min_size=1, max_size=6):
    n = draw(st.integers(min_size, max_size))
    out = []
    for _ in range(n):
        rec = {}
        for side in ("a", "b"):
            rec.update({f"{side}.{f}": draw(NUMBER) for f in schema.numeric})
            rec.update({f"{side}.{c}": draw(CATEGORY) for c in schema.categorical})
        out.append(rec)
    return out


# -- valid requests: exactly the in-process answer ----------------------------------------------

def test_random_valid_rows_match_the_in_process_predictor(server, predictor):
    @FUZZ
    @given(records=valid_records(predictor.schema_), form=FORMS)
    def run(records, form):
        status, body = post(server, json.dumps(as_form(records, form)).encode())
        assert status == 200, body[:500]
        got = np.array([p["prob_a_better"] for p in json.loads(body)["predictions"]])
        np.testing.assert_allclose(got, expected_probs(predictor, records), rtol=0, atol=1e-9)

    run()


# -- bad requests: 4xx, or (where MLflow coerces) the right answer -------------------------------

WRONG = st.one_of(st.text(min_size=1, max_size=10).filter(lambda s: not _numeric_text(s)),
                  st.booleans(), st.lists(st.integers(), max_size=3),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                  st.sampled_from([math.nan, math.inf, -math.inf]))


def _numeric_text(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


@st.composite
def mutated_records(draw, schema):
    records = draw(valid_records(schema, max_size=3))
    columns = list(records[0])
    row = draw(st.integers(0, len(records) - 1))
    column = draw(st.sampled_from(columns))
    kind = draw(st.sampled_from(["drop", "wrong", "extra"]))
    if kind == "drop":
        for r in records:
            del r[column]
    elif kind == "wrong":
        records[row][column] = draw(WRONG)
    else:
        name = draw(st.text(min_size=1, max_size=8).filter(lambda s: s not in columns))
        for r in records:
            r[name] = draw(st.one_of(NUMBER, st.text(max_size=5)))
    return records, kind, column


def test_mutated_rows_get_4xx_or_the_right_answer(server, predictor):
    schema = predictor.schema_
    numeric = {f"{s}.{f}" for s in ("a", "b") for f in schema.numeric}

    @FUZZ
    @given(case=mutated_records(schema), form=FORMS)
    def run(case, form):
        records, kind, column = case
        if form == "inputs_columns" and len({len(r) for r in records}) > 1:
            form = "dataframe_records"
        # json.dumps writes NaN/Infinity tokens; the server's parser reads them.
        status, body = post(server, json.dumps(as_form(records, form)).encode())
        check_answer(server, status, body)
        if kind == "drop":
            assert 400 <= status < 500
            assert column in json.loads(body)["message"]
        elif kind == "wrong" and column in numeric:
            values = [r[column] for r in records]
            if any(not isinstance(v, (int, float, type(None))) or (isinstance(v, float) and math.isinf(v))
                   for v in values):
                assert 400 <= status < 500, f"{column}={values!r} scored: {body[:300]!r}"
            else:  # NaN is a missing value, like null; MLflow reads booleans in a double column as 0.0 / 1.0
                assert status == 200, body[:300]
                coerced = [{**r, column: None if r[column] is None else float(r[column])} for r in records]
                got = np.array([p["prob_a_better"] for p in json.loads(body)["predictions"]])
                np.testing.assert_allclose(got, expected_probs(predictor, coerced), rtol=0, atol=1e-9)
        elif kind == "extra" and status == 200:  # MLflow drops columns the signature does not name
            names = set(numeric) | {f"{s}.{c}" for s in ("a", "b") for c in schema.categorical}
            kept = [{k: v for k, v in r.items() if k in names} for r in records]
            got = np.array([p["prob_a_better"] for p in json.loads(body)["predictions"]])
            np.testing.assert_allclose(got, expected_probs(predictor, kept), rtol=0, atol=1e-9)

    run()


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                        max_size=4),
                           max_leaves=20)
TOP_KEYS = st.sampled_from(["dataframe_split", "dataframe_records", "inputs", "instances", "params", "x"])
CONTENT_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/csv",
                                 "application/vnd.apache.parquet", "text/plain", "application/xml",
                                 "application/json; charset=latin-1", "application/json; format=records",
                                 "multipart/form-data", "", None])


@FUZZ
@given(doc=st.one_of(JSON_VALUES, st.dictionaries(TOP_KEYS, JSON_VALUES, max_size=2)))
def test_random_json_documents_never_get_5xx(server, doc):
    status, body = post(server, json.dumps(doc).encode())
    check_answer(server, status, body)


@FUZZ
@given(body=st.binary(max_size=300), content_type=CONTENT_TYPES)
def test_random_bytes_and_content_types_never_get_5xx(server, body, content_type):
    status, answer = post(server, body, content_type)
    check_answer(server, status, answer)


@pytest.mark.parametrize("body, content_type, want", [
    (b"", "application/json", 400),
    (b"", None, 415),
    (b'{"dataframe_records": []}', None, 415),
    (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json", 400),
    (b'{"inputs": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}", "application/json", 400),
    (b"\xff\xfe\x00\x81", "application/json", 400),
    (b"a.strong,b.strong\n1,2\n", "text/csv", 400),
    (b"PAR1garbage", "application/vnd.apache.parquet", 400),
    (b"<x/>", "application/xml", 415),
])
def test_edge_bodies_get_the_right_4xx(server, body, content_type, want):
    status, answer = post(server, body, content_type)
    assert status == want, answer[:300]
    check_answer(server, status, answer)


def test_a_20_mb_request_is_answered_exactly(server, pairs, predictor):
    records, _ = pairs
    n = 240_000  # ~88 bytes a pair: about 21 MB
    many = [records[i % len(records)] for i in range(n)]
    body = json.dumps(as_form(many, "dataframe_split")).encode()
    assert len(body) > 20 * 10**6, len(body)
    status, answer = post(server, body)
    assert status == 200, answer[:300]
    got = np.array([p["prob_a_better"] for p in json.loads(answer)["predictions"]])
    expected = np.tile(expected_probs(predictor, records), n // len(records) + 1)[:n]  # rows are independent
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert ping(server) == 200


def test_the_server_listens_on_loopback_only(server):
    """The bound address itself, from the kernel's socket table (Linux): 127.0.0.1, not 0.0.0.0."""
    port = int(server.rsplit(":", 1)[1])
    table = Path("/proc/net/tcp")
    if not table.exists():
        pytest.skip("no /proc/net/tcp on this system")
    listening = [line.split()[1] for line in table.read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port]  # 0A = LISTEN
    assert listening, f"nothing listens on port {port}"
    assert {address.split(":")[0] for address in listening} == {"0100007F"}  # 127.0.0.1, little-endian hex
    v6 = Path("/proc/net/tcp6")
    if v6.exists():
        assert not [line for line in v6.read_text().splitlines()[1:]
                    if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port]


def test_a_body_over_the_limit_gets_413_before_it_is_sent(server):
    """Content-Length over MAX_BODY_BYTES: 413 at once, without reading the body."""
    import socket

    from ckptsel.serving import MAX_BODY_BYTES

    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"POST /invocations HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode() + b'{"inputs": [')
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"MiB" in answer
    assert ping(server) == 200


@pytest.mark.parametrize("body,column", [
    ({"dataframe_records": [{"a.x": 1.0, "b.x": []}]}, "b.x"),
    ({"inputs": [{"a.x": {"v": 1}, "b.x": 2.0}]}, "a.x"),
    ({"inputs": {"a.x": [1.0, [2.0]], "b.x": [1.0, 2.0]}}, "a.x"),
    ({"dataframe_split": {"columns": ["a.x", "b.x"], "data": [[1.0, 2.0], [3.0, [4.0]]]}}, "b.x"),
    ({"instances": [[1.0, [2.0]]]}, "#1"),
])
def test_list_or_object_cells_are_refused_before_mlflow(body, column):
    """MLflow reads [] in a number column as NaN (a missing value); the guard refuses it, naming the column."""
    from ckptsel.serving import _json_problem

    problem = _json_problem(json.dumps(body).encode())
    assert problem and repr(column) in problem


@pytest.mark.parametrize("body", [
    {"dataframe_records": [{"a.x": 1.0, "b.x": None, "a.m": "web"}]},
    {"dataframe_split": {"columns": ["a.x", "b.x"], "data": [[1.0, 2.0]]}},
    {"inputs": {"a.x": [1.0, 2.0], "b.x": [None, 2.0]}},
    {"dataframe_records": [{"a.x": 1.0, "b.x": "[[[[not brackets]]]]"}]},
])
def test_scalar_cells_pass_the_guard(body):
    from ckptsel.serving import _json_problem

    assert _json_problem(json.dumps(body).encode()) is None
