"""The store: one SQLite database, the single source of truth of ckptsel.

Tables (schema version in ``meta``):

- ``checkpoints``: id (the name users type), path, run, step, fingerprint, metadata (JSON).
- ``features``: (fingerprint, name, spec_hash) -> numeric ``value`` or categorical ``category``.
- ``labels``: (fingerprint, target, spec_hash) -> ``value`` (mean over seeds), ``std``, ``n``.
- ``predictions``: (fingerprint, task, spec_hash) -> per-example predictions (a 1-D array).

Features and labels are keyed by the checkpoint's fingerprint (a content hash), so a
checkpoint whose weights changed never inherits its old numbers, and by the hash of the
spec that produced them, so a changed spec never overwrites old numbers in place. When a
name exists under several spec hashes, the newest row is the one read.

The database runs in WAL mode and every write is one transaction: a crash mid-write
leaves the previous state intact.

When the disk says no (full, read-only, not ours, locked by another writer),
:func:`storage_error` turns the ``sqlite3`` or ``OSError`` into a one-line ``CkptselError``
naming the path and the fix; the transaction that failed is rolled back, so the store keeps
exactly what was committed before.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ckptsel.errors import CkptselError

SCHEMA_VERSION = 2

# Migration i brings a database from version i to version i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE checkpoints (
        id          TEXT PRIMARY KEY,
        path        TEXT,
        run         TEXT,
        step        INTEGER,
        fingerprint TEXT NOT NULL,
        metadata    TEXT NOT NULL DEFAULT '{}',
        added_at    REAL NOT NULL
    );
    CREATE INDEX checkpoints_run_step ON checkpoints(run, step);
    CREATE INDEX checkpoints_path ON checkpoints(path);
    CREATE INDEX checkpoints_fingerprint ON checkpoints(fingerprint);
    CREATE TABLE features (
        fingerprint TEXT NOT NULL,
        name        TEXT NOT NULL,
        kind        TEXT NOT NULL CHECK (kind IN ('numeric', 'categorical')),
        value       REAL,
        category    TEXT,
        spec_hash   TEXT NOT NULL,
        created_at  REAL NOT NULL,
        PRIMARY KEY (fingerprint, name, spec_hash)
    );
    CREATE TABLE labels (
        fingerprint TEXT NOT NULL,
        target      TEXT NOT NULL,
        value       REAL,
        std         REAL,
        n           INTEGER NOT NULL DEFAULT 1,
        spec_hash   TEXT NOT NULL,
        created_at  REAL NOT NULL,
        PRIMARY KEY (fingerprint, target, spec_hash)
    );
    """,
    # v2: per-example predictions of k-shot tasks, for the instability score.
    """
    CREATE TABLE predictions (
        fingerprint TEXT NOT NULL,
        task        TEXT NOT NULL,
        spec_hash   TEXT NOT NULL,
        dtype       TEXT NOT NULL,
        data        BLOB NOT NULL,
        created_at  REAL NOT NULL,
        PRIMARY KEY (fingerprint, task, spec_hash)
    );
    """,
]


def spec_hash(spec: object) -> str:
    """A short, stable hash of a JSON-serialisable spec (keys sorted)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    id: str
    path: str | None
    run: str | None
    step: int | None
    fingerprint: str
    metadata: dict = field(default_factory=dict)


@dataclass
class FeatureFrame:
    """Features of some checkpoints as arrays, without pandas (the fast CLI path reads this).

    ``numeric`` is ``len(ids) x len(numeric_names)`` float64 with NaN for missing;
    ``categorical`` is ``len(ids) x len(categorical_names)`` object array of str or None.
    """

    ids: list[str]
    numeric_names: list[str]
    numeric: np.ndarray
    categorical_names: list[str]
    categorical: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: Sequence[int] | np.ndarray) -> "FeatureFrame":
        rows = np.asarray(rows, dtype=int)
        return FeatureFrame(
            [self.ids[i] for i in rows],
            list(self.numeric_names),
            self.numeric[rows],
            list(self.categorical_names),
            self.categorical[rows],
        )

    def column(self, name: str) -> np.ndarray:
        if name in self.numeric_names:
            return self.numeric[:, self.numeric_names.index(name)]
        if name in self.categorical_names:
            return self.categorical[:, self.categorical_names.index(name)]
        raise KeyError(name)

    def as_dict(self, row: int) -> dict:
        out: dict = {n: _none_if_nan(v) for n, v in zip(self.numeric_names, self.numeric[row])}
        out.update(zip(self.categorical_names, self.categorical[row]))
        return out


def _none_if_nan(v: float) -> float | None:
    return None if v != v else float(v)


_RUN_AT_STEP = re.compile(r"^(?P<run>.+)@(?P<step>-?\d+)$")


class Store:
    """The SQLite store. Open with ``Store(path)``; use as a context manager to close it."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise CkptselError(
                f"no store at {self.path}; import checkpoints first with "
                "`ckptsel import-table FILE --id-column COL --labels ...` or pass --workspace"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (sqlite3.DatabaseError, CkptselError) as e:
            self.conn.close()
            if isinstance(e, CkptselError):
                raise
            if (err := storage_error(e, self.path.parent)) is not None:
                raise err from e
            raise CkptselError(f"{self.path} is not a readable ckptsel store ({e}); "
                               "move it aside or pass another --workspace") from e

    # -- plumbing -------------------------------------------------------------------------
    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def transaction(self) -> "_Transaction":
        """``with store.transaction():`` wraps writes in BEGIN IMMEDIATE ... COMMIT/ROLLBACK."""
        return _Transaction(self.conn)

    def _migrate(self) -> None:
        self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise CkptselError(
                f"{self.path} has store schema version {version}, newer than this ckptsel "
                f"understands ({SCHEMA_VERSION}); upgrade ckptsel"
            )
        for v in range(version, SCHEMA_VERSION):
            with self.transaction():
                for statement in MIGRATIONS[v].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(v + 1),)
                )

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])

    # -- checkpoints ----------------------------------------------------------------------
    def upsert_checkpoint(self, ckpt: Checkpoint) -> None:
        self.conn.execute(
            """INSERT INTO checkpoints(id, path, run, step, fingerprint, metadata, added_at)
               VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(id) DO UPDATE SET path=excluded.path, run=excluded.run,
                 step=excluded.step, fingerprint=excluded.fingerprint, metadata=excluded.metadata""",
            (ckpt.id, ckpt.path, ckpt.run, ckpt.step, ckpt.fingerprint,
             json.dumps(ckpt.metadata, sort_keys=True), time.time()),
        )

    def checkpoints(self, ids: Iterable[str] | None = None) -> list[Checkpoint]:
        rows = self.conn.execute(
            "SELECT id, path, run, step, fingerprint, metadata FROM checkpoints "
            "ORDER BY run IS NULL, run, step, id"
        ).fetchall()
        found = [Checkpoint(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]
        if ids is None:
            return found
        by_id = {c.id: c for c in found}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise CkptselError(f"unknown checkpoints {', '.join(map(repr, unknown[:5]))} in {self.path}; "
                               "see `ckptsel list`")
        return [by_id[i] for i in ids]

    def get_checkpoint(self, ref: str) -> Checkpoint:
        """Resolve a checkpoint by id, by path, or as ``run@step``."""
        row = self.conn.execute(
            "SELECT id, path, run, step, fingerprint, metadata FROM checkpoints WHERE id=?", (ref,)
        ).fetchone()
        if row is None:
            resolved = str(Path(ref).expanduser().resolve())
            row = self.conn.execute(
                "SELECT id, path, run, step, fingerprint, metadata FROM checkpoints "
                "WHERE path=? OR path=? LIMIT 1", (ref, resolved)
            ).fetchone()
        if row is None and (m := _RUN_AT_STEP.match(ref)):
            row = self.conn.execute(
                "SELECT id, path, run, step, fingerprint, metadata FROM checkpoints "
                "WHERE run=? AND step=? LIMIT 1", (m["run"], int(m["step"]))
            ).fetchone()
        if row is None:
            n = self.conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
            raise CkptselError(
                f"unknown checkpoint {ref!r}: no id, path or run@step matches among the {n} in "
                f"{self.path}; see `ckptsel list`, or add it with `ckptsel import-table` / `ckptsel add`"
            )
        return Checkpoint(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]))

    # -- features and labels --------------------------------------------------------------
    def put_features(self, fingerprint: str, numeric: dict[str, float | None],
                     categorical: dict[str, str | None] | None = None, *, spec_hash: str) -> None:
        now = time.time()
        rows = [(fingerprint, k, "numeric", None if v is None or v != v else float(v), None, spec_hash, now)
                for k, v in numeric.items()]
        rows += [(fingerprint, k, "categorical", None, None if v is None else str(v), spec_hash, now)
                 for k, v in (categorical or {}).items()]
        self.conn.executemany(
            "INSERT OR REPLACE INTO features(fingerprint, name, kind, value, category, spec_hash, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def put_label(self, fingerprint: str, target: str, value: float | None, *, spec_hash: str,
                  std: float | None = None, n: int = 1) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO labels(fingerprint, target, value, std, n, spec_hash, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (fingerprint, target, None if value is None or value != value else float(value),
             std, n, spec_hash, time.time()),
        )

    def _latest(self, table: str, key: str, fingerprints: Sequence[str] | None) -> list[tuple]:
        cols = "f.fingerprint, f.name, f.kind, f.value, f.category" if table == "features" \
            else "f.fingerprint, f.target, f.value, f.std, f.n"
        sql = (f"SELECT {cols} FROM {table} f JOIN "
               f"(SELECT MAX(rowid) AS r FROM {table} GROUP BY fingerprint, {key}) m ON f.rowid = m.r")
        rows = self.conn.execute(sql).fetchall()
        if fingerprints is not None:
            wanted = set(fingerprints)
            rows = [r for r in rows if r[0] in wanted]
        return rows

    def feature_frame(self, ids: Sequence[str] | None = None) -> FeatureFrame:
        """The newest value of every feature for the given checkpoints (all when None)."""
        ckpts = self.checkpoints(ids)
        fps = [c.fingerprint for c in ckpts]
        rows = self._latest("features", "name", fps)
        kinds: dict[str, str] = {}
        for _, name, kind, _, _ in rows:
            kinds.setdefault(name, kind)
        numeric_names = sorted(n for n, k in kinds.items() if k == "numeric")
        categorical_names = sorted(n for n, k in kinds.items() if k == "categorical")
        row_of = {fp: i for i, fp in enumerate(fps)}
        num_col = {n: j for j, n in enumerate(numeric_names)}
        cat_col = {n: j for j, n in enumerate(categorical_names)}
        numeric = np.full((len(fps), len(numeric_names)), np.nan)
        categorical = np.full((len(fps), len(categorical_names)), None, dtype=object)
        for fp, name, kind, value, category in rows:
            if kind == "numeric" and name in num_col:
                numeric[row_of[fp], num_col[name]] = np.nan if value is None else value
            elif kind == "categorical" and name in cat_col:
                categorical[row_of[fp], cat_col[name]] = category
        return FeatureFrame([c.id for c in ckpts], numeric_names, numeric, categorical_names, categorical)

    def labels(self, target: str, ids: Sequence[str] | None = None) -> dict[str, float]:
        """``{checkpoint id: value}`` for checkpoints that have a non-missing label ``target``."""
        ckpts = self.checkpoints(ids)
        by_fp = {c.fingerprint: c.id for c in ckpts}
        return {by_fp[fp]: v for fp, t, v, _, _ in self._latest("labels", "target", list(by_fp))
                if t == target and v is not None}

    def put_predictions(self, fingerprint: str, task: str, predictions: np.ndarray, *, spec_hash: str) -> None:
        """Per-example predictions of one task (e.g. the chosen answer index per example),
        stored compactly as raw bytes of a 1-D array."""
        arr = np.ascontiguousarray(predictions).ravel()
        self.conn.execute(
            "INSERT OR REPLACE INTO predictions(fingerprint, task, spec_hash, dtype, data, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)", (fingerprint, task, spec_hash, arr.dtype.str, arr.tobytes(), time.time()))

    def predictions(self, task: str, fingerprints: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``{fingerprint: array}`` of the newest stored predictions of ``task``."""
        rows = self.conn.execute(
            "SELECT p.fingerprint, p.dtype, p.data FROM predictions p JOIN "
            "(SELECT MAX(rowid) AS r FROM predictions WHERE task=? GROUP BY fingerprint) m ON p.rowid = m.r",
            (task,)).fetchall()
        wanted = None if fingerprints is None else set(fingerprints)
        return {fp: np.frombuffer(data, dtype=np.dtype(dt)).copy() for fp, dt, data in rows
                if wanted is None or fp in wanted}

    def prediction_tasks(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT task FROM predictions ORDER BY task")]

    def feature_names(self, fingerprint: str, spec_hash: str | None = None) -> set[str]:
        """Names of the features stored for one checkpoint (a stored missing value counts),
        under any spec or under one ``spec_hash``."""
        if spec_hash is None:
            rows = self.conn.execute("SELECT DISTINCT name FROM features WHERE fingerprint=?", (fingerprint,))
        else:
            rows = self.conn.execute("SELECT name FROM features WHERE fingerprint=? AND spec_hash=?",
                                     (fingerprint, spec_hash))
        return {r[0] for r in rows}

    def has_predictions(self, fingerprint: str, task: str, spec_hash: str) -> bool:
        return self.conn.execute("SELECT 1 FROM predictions WHERE fingerprint=? AND task=? AND spec_hash=?",
                                 (fingerprint, task, spec_hash)).fetchone() is not None

    def has_label(self, fingerprint: str, target: str, spec_hash: str) -> bool:
        return self.conn.execute("SELECT 1 FROM labels WHERE fingerprint=? AND target=? AND spec_hash=?",
                                 (fingerprint, target, spec_hash)).fetchone() is not None

    def delete_label(self, fingerprint: str, target: str, spec_hash: str) -> None:
        self.conn.execute("DELETE FROM labels WHERE fingerprint=? AND target=? AND spec_hash=?",
                          (fingerprint, target, spec_hash))

    def targets(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT target FROM labels ORDER BY target")]

    def counts(self) -> dict[str, int]:
        return {t: self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("checkpoints", "features", "labels")}


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        # SQLite may already have rolled back (a full disk, an I/O error): then ROLLBACK itself
        # fails, and that error must not hide the one that caused it.
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass


# SQLite primary result codes (https://www.sqlite.org/rescode.html) that mean the disk said no.
_SQLITE_BUSY, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN = 5, 8, 10, 13, 14
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _read_only_fs(path: Path) -> bool:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
            except OSError:
                return False
    return False


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


def storage_error(exc: BaseException, workspace: str | Path) -> CkptselError | None:
    """A one-line ``CkptselError`` for a storage fault under ``workspace``, else None.

    Faults: no space (ENOSPC, EDQUOT, EFBIG, SQLite "database or disk is full"), a read-only
    file system (EROFS), no permission (EACCES, EPERM, SQLite "attempt to write a readonly
    database" / "unable to open database file" where the workspace is not writable), a disk
    I/O error, and a store locked by another writer for longer than the 30 s busy timeout.
    Other errors (a bug, a bad checkpoint) give None and keep their traceback.
    """
    workspace = Path(workspace)
    where, kind = workspace, None
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        where = workspace / "ckptsel.db" if (workspace / "ckptsel.db").exists() else workspace
        if code == _SQLITE_FULL:
            kind = "full"
        elif code == _SQLITE_BUSY:
            kind = "locked"
        elif code in (_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_IOERR):
            if _read_only_fs(workspace):
                kind = "read-only"
            elif workspace.is_dir() and not os.access(workspace, os.W_OK):
                kind = "denied"
            elif code == _SQLITE_IOERR:
                kind = "full" if _free_bytes(workspace) < (1 << 20) else "io"
            elif code == _SQLITE_READONLY:
                kind = "denied"
    elif isinstance(exc, OSError) and exc.errno is not None:
        where = Path(exc.filename) if exc.filename else workspace
        detail = exc.strerror or detail
        kind = ("full" if exc.errno in _FULL_ERRNOS else "read-only" if exc.errno == errno.EROFS
                else "denied" if exc.errno in (errno.EACCES, errno.EPERM) else None)
    else:  # libraries that wrap these errors in their own types (safetensors, SQLAlchemy for MLflow)
        for text, k in ((os.strerror(errno.ENOSPC), "full"), ("database or disk is full", "full"),
                        (os.strerror(errno.EROFS), "read-only")):
            if text in detail:
                kind = k
    if kind == "full":
        return CkptselError(f"no space left on the disk of {where} ({detail}); free space there or move the "
                            f"workspace (--workspace DIR on another disk) and rerun: the store keeps everything "
                            f"finished before the failure")
    if kind == "read-only":
        return CkptselError(f"cannot write {where}: read-only file system ({detail}; the store needs its lock "
                            f"files beside it even to read); remount it read-write, or copy the workspace to a "
                            f"writable disk and pass --workspace DIR")
    if kind == "denied":
        return CkptselError(f"cannot access {where}: permission denied for user {_user()} ({detail}); make it "
                            f"readable and writable by that user (chown/chmod) or pass --workspace DIR you own")
    if kind == "locked":
        return CkptselError(f"the store {where} is locked by another process writing to it ({detail}); "
                            f"let it finish (or stop it) and rerun")
    if kind == "io":
        return CkptselError(f"disk I/O error on {where} ({detail}); check the disk (dmesg, df) and rerun: "
                            f"the store keeps everything finished before the failure")
    return None


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 1 << 62
