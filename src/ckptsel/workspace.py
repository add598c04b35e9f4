"""Where ckptsel keeps its state: one directory with the store, MLflow and exported models.

    <workspace>/ckptsel.db          the store (SQLite)
    <workspace>/mlflow.db           MLflow tracking and registry (SQLite)
    <workspace>/mlartifacts/        MLflow artifacts
    <workspace>/models/<name>/      exported predictors for the fast CLI path
    <workspace>/evaluations/        the latest evaluation result per (target, split), JSON

The workspace is ``--workspace``, else ``$CKPTSEL_HOME``, else the current directory.
``$MLFLOW_TRACKING_URI``, when set, wins over the workspace's ``mlflow.db``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ckptsel.errors import CkptselError

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_model_name(name: str) -> str:
    """Model names become directory names: letters, digits, '.', '_' and '-' only, no '..'."""
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or ".." in name:  # fullmatch: no "x\n"
        raise CkptselError(
            f"model name {name!r} is not allowed; use letters, digits, '.', '_' and '-' "
            "(it becomes a directory under <workspace>/models/)"
        )
    return name


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, path: str | os.PathLike | None = None) -> "Workspace":
        root = Path(path or os.environ.get("CKPTSEL_HOME") or ".").expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise CkptselError(f"workspace {root} is a file, not a directory; pass --workspace DIR")
        return cls(root)

    @property
    def db_path(self) -> Path:
        return self.root / "ckptsel.db"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def model_dir(self, name: str) -> Path:
        return self.models_dir / check_model_name(name)

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow_db}"

    @property
    def evaluations_dir(self) -> Path:
        return self.root / "evaluations"

    def save_evaluation(self, result: dict) -> Path:
        """Write an ``evaluation.evaluate`` result as ``evaluations/<target>__<split>.json``
        (replacing the previous one for that target and split, atomically). Characters outside
        ``[A-Za-z0-9._@-]`` become ``_``; a name so changed, or too long for a file name, gets a hash
        of the exact key, so no two keys share a file and none leaves ``evaluations/``."""
        import hashlib
        import json

        key = f"{result['target']}__{result['split']}"
        stem = re.sub(r"[^A-Za-z0-9._@-]+", "_", key)
        if stem != key or len(stem) > 120:
            stem = f"{stem[:100]}-{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"
        out = self.evaluations_dir / f"{stem}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2, sort_keys=True))
        tmp.replace(out)
        return out

    def evaluations(self) -> list[dict]:
        """Every saved evaluation result, oldest file first."""
        import json

        if not self.evaluations_dir.is_dir():
            return []
        files = sorted(self.evaluations_dir.glob("*.json"), key=lambda f: (f.stat().st_mtime, f.name))
        return [json.loads(f.read_text()) for f in files]

    def ensure(self) -> "Workspace":
        self.root.mkdir(parents=True, exist_ok=True)
        return self
