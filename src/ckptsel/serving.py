"""``ckptsel serve``: the registered predictor behind ``mlflow models serve``.

Runs ``mlflow models serve --env-manager local`` with what it needs and often lacks: the
environment's ``bin`` on PATH (MLflow starts uvicorn by name) and the tracking URI (a
``models:/name@alias`` URI is resolved through the registry). Binds 127.0.0.1 by default.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ckptsel.errors import CkptselError
from ckptsel.workspace import Workspace, check_model_name


def model_uri(ws: Workspace, name: str | None) -> str:
    """``NAME@ALIAS``, ``NAME/VERSION`` or ``NAME`` (alias champion) as a ``models:/`` URI."""
    if not name:
        from ckptsel.ranking import exported_models

        names = exported_models(ws)
        if len(names) != 1:
            raise CkptselError(f"{'no' if not names else len(names)} predictors in {ws.models_dir}; "
                               "say which to serve with --name NAME@ALIAS")
        name = names[0]
    base, sep, tail = name.partition("@")
    if not sep:
        base, sep, tail = name.partition("/")
        if sep and not tail.isdigit():
            raise CkptselError(f"--name {name!r}: use NAME@ALIAS or NAME/VERSION")
        check_model_name(base)
        return f"models:/{base}/{tail}" if sep else f"models:/{base}@champion"
    check_model_name(base)
    if not tail.replace("-", "").replace("_", "").isalnum():
        raise CkptselError(f"--name {name!r}: alias {tail!r} must be letters, digits, '-' or '_'")
    return f"models:/{base}@{tail}"


def serve_command(ws: Workspace, name: str | None, host: str = "127.0.0.1", port: int = 5000,
                  workers: int = 1) -> tuple[list[str], dict]:
    """The argv and environment of the ``mlflow models serve`` process."""
    uri = model_uri(ws, name)
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
            "--host", host, "--port", str(port), "--workers", str(workers)]
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["MLFLOW_TRACKING_URI"] = ws.tracking_uri
    return argv, env


def serve(ws: Workspace, name: str | None, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> None:
    """Replace this process with the MLflow scoring server (signals reach it directly)."""
    argv, env = serve_command(ws, name, host, port, workers)
    print(f"serving {argv[6]} on http://{host}:{port}/invocations (tracking {env['MLFLOW_TRACKING_URI']})",
          file=sys.stderr, flush=True)
    os.execve(argv[0], argv, env)
