"""``ckptsel serve``: the registered predictor behind MLflow's scoring server.

``ckptsel serve`` runs ``python -m ckptsel.serving MODEL_URI --host H --port P --workers N``
with the tracking URI set (a ``models:/name@alias`` URI is resolved through the registry of
``$MLFLOW_TRACKING_URI``, else the workspace's ``mlflow.db``). That process downloads
the model once and starts uvicorn on ``scoring_app``: MLflow's own scoring app
(``mlflow.pyfunc.scoring_server.init``, the one ``mlflow models serve --env-manager local``
runs) behind ``RequestGuard``. Binds 127.0.0.1 by default.

Why the guard: MLflow's app answers 500 for two kinds of bad request before any ckptsel code
runs (MLflow 3.17): a POST without a Content-Type header (``content_type.split`` on None) and
JSON nested deeper than Python's recursion limit (``json.loads`` raises RecursionError, which
it does not catch). The guard answers 415 and 400 for those, and 413 for bodies over
``MAX_BODY_BYTES`` (MLflow has no limit, and a huge body would run into its 60 s timeout,
a 504). Every other request goes to MLflow unchanged. MLflow's schema enforcement, kept as it
is: columns the signature does not name are dropped, not refused; values it cannot convert to
the signature's types get 400; JSON booleans in a numeric column are read as 0.0 / 1.0. The
rest (missing columns, infinities) is refused with 400 by ``ckptsel.payload``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile

from ckptsel.errors import CkptselError
from ckptsel.workspace import Workspace, check_model_name


def model_uri(ws: Workspace, name: str | None) -> str:
    """The ``models:/NAME/VERSION`` URI of what ``NAME``, ``NAME@ALIAS`` or ``NAME/VERSION`` means
    (:func:`ckptsel.exports.resolve`, the resolver of ``predict-pair`` and ``rank``). A model with
    no export in this workspace (trained elsewhere against a shared tracking server) is asked of
    MLflow's registry directly: ``NAME`` as ``NAME@champion``."""
    from ckptsel import exports

    if not name or exports.versions(ws, exports.parse_ref(name)[0]):
        found = exports.resolve(ws, name)
        if found.registry is None:
            raise CkptselError(f"model {found} is exported but not registered in MLflow (trained without "
                               f"registration); retrain it with `ckptsel train --target T --name {found.name}`")
        return f"models:/{found.name}/{found.registry['version']}"
    base, alias, version = exports.parse_ref(name)
    return f"models:/{base}/{version}" if version else f"models:/{base}@{alias or exports.DEFAULT_ALIAS}"


def check_port_free(host: str, port: int) -> None:
    """Refuse, in one line, a port another process listens on (uvicorn would print a traceback)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise CkptselError(f"port {port} on {host} is in use by another process; pass --port N "
                                   f"(e.g. --port {port + 1}) or stop the other server") from None
            raise CkptselError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --host or --port") from None


MAX_BODY_BYTES = 64 * 2**20
MODEL_PATH_ENV = "CKPTSEL_SERVE_MODEL_PATH"


def serve_command(ws: Workspace, name: str | None, host: str = "127.0.0.1", port: int = 5000,
                  workers: int = 1) -> tuple[list[str], dict]:
    """The argv and environment of the scoring server process."""
    uri = model_uri(ws, name)
    argv = [sys.executable, "-m", "ckptsel.serving", uri, "--host", host, "--port", str(port),
            "--workers", str(workers)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": ws.tracking_uri}
    return argv, env


def serve(ws: Workspace, name: str | None, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> None:
    """Replace this process with the scoring server (signals reach it directly)."""
    argv, env = serve_command(ws, name, host, port, workers)
    check_port_free(host, port)
    print(f"serving {argv[3]} on http://{host}:{port}/invocations (tracking {env['MLFLOW_TRACKING_URI']})",
          file=sys.stderr, flush=True)
    os.execve(argv[0], argv, env)


# -- the server process -------------------------------------------------------------------------
def scoring_app():
    """uvicorn factory: MLflow's scoring app for the model at ``$CKPTSEL_SERVE_MODEL_PATH``, guarded."""
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    return RequestGuard(scoring_server.init(mlflow.pyfunc.load_model(os.environ[MODEL_PATH_ENV])))


class RequestGuard:
    """ASGI middleware: 415/413/400 for the POST /invocations requests MLflow would answer 5xx."""

    def __init__(self, app, max_body_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != "/invocations":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if not content_type.strip():
            return await _reply(send, 415, "no Content-Type header; send application/json "
                                           "(or text/csv, application/vnd.apache.parquet)")
        too_big = (f"request body over {self.max_body_bytes // 2**20} MiB; "
                   "send fewer pairs per request")
        if int(headers.get(b"content-length", b"0") or 0) > self.max_body_bytes:
            return await _reply(send, 413, too_big)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return await _reply(send, 413, too_big)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        is_json = content_type.split(";")[0].strip().lower() == "application/json"
        problem = await asyncio.to_thread(_json_problem, body) if is_json else None
        if problem:
            return await _reply(send, 400, problem)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


_EXAMPLE = '{"dataframe_records": [{"a.<feature>": ..., "b.<feature>": ...}, ...]}'
_SCALARS = (str, int, float, bool, type(None))


def _bracket_depth(body: bytes) -> int:
    """An upper bound on the JSON nesting depth (brackets inside strings counted too; vectorised)."""
    import numpy as np

    raw = np.frombuffer(body, dtype=np.uint8)
    opens = (raw == ord("[")) | (raw == ord("{"))
    brackets = opens | (raw == ord("]")) | (raw == ord("}"))
    steps = np.where(opens[brackets], 1, -1)
    return int(np.cumsum(steps).max()) if len(steps) else 0


def _json_problem(body: bytes) -> str | None:
    """Why MLflow must not see this JSON body, or None. Two cases MLflow gets wrong: nesting so
    deep that ``json.loads`` raises RecursionError (a 500 there), and a cell that is a list or
    an object (MLflow's schema enforcement turns ``[]`` in a number column into NaN, i.e. a
    missing value, and scores it). A request with scalar cells nests at most 3 deep (records
    and column forms) or 4 (``dataframe_split``); only deeper bodies are parsed here."""
    if _bracket_depth(body) <= 3:
        return None
    try:
        obj = json.loads(body)
    except RecursionError:
        return f"JSON nested too deeply; a request is {_EXAMPLE}"
    except ValueError:  # not JSON: MLflow answers 400 for that itself
        return None
    cell = _nonscalar_cell(obj)
    return None if cell is None else (f"column {cell!r}: a cell holds a list or an object; every value must be a "
                                      f"number, a string or null, as in {_EXAMPLE}")


def _nonscalar_cell(obj) -> str | None:
    """The column of the first list/object cell in any of MLflow's request forms, else None."""
    if not isinstance(obj, dict):
        return None
    split = obj.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        columns = split.get("columns") if isinstance(split.get("columns"), list) else []
        for row in split["data"]:
            for j, v in enumerate(row if isinstance(row, list) else [row]):
                if not isinstance(v, _SCALARS):
                    return str(columns[j]) if j < len(columns) else f"#{j}"
    for key in ("dataframe_records", "inputs", "instances"):
        value = obj.get(key)
        rows = value if isinstance(value, list) else []
        for row in rows:
            items = row.items() if isinstance(row, dict) else enumerate(row) if isinstance(row, list) else ()
            for k, v in items:
                if not isinstance(v, _SCALARS):
                    return str(k) if isinstance(k, str) else f"#{k}"
        if isinstance(value, dict):  # columns: {"a.x": [1, 2], ...}
            for k, col in value.items():
                for v in col if isinstance(col, list) else [col]:
                    if not isinstance(v, _SCALARS):
                        return str(k)
    return None


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"error_code": "BAD_REQUEST", "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> int:
    """``python -m ckptsel.serving MODEL_URI``: download the model once, then run uvicorn."""
    import logging

    parser = argparse.ArgumentParser(prog="python -m ckptsel.serving",
                                     description="serve an MLflow pyfunc model (run by `ckptsel serve`)")
    parser.add_argument("model_uri", help="models:/NAME@ALIAS, models:/NAME/VERSION or a local directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)

    import mlflow.artifacts
    import uvicorn
    from mlflow.exceptions import MlflowException

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ckptsel-serve-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=args.model_uri, dst_path=tmp)
        except MlflowException as e:
            print(f"ckptsel serve: error: cannot load {args.model_uri} from {os.environ.get('MLFLOW_TRACKING_URI')}: "
                  f"{str(e).splitlines()[0]}", file=sys.stderr)
            return 2
        os.environ[MODEL_PATH_ENV] = path
        # uvicorn re-raises SIGTERM after its graceful shutdown; exit through Python so tmp is removed.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        uvicorn.run("ckptsel.serving:scoring_app", factory=True, host=args.host, port=args.port,
                    workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
