"""The store: one SQLite database, the single source of truth of ckptsel.

Tables (schema version in ``meta``):

- ``checkpoints``: id (the name users type), path, run, step, fingerprint, metadata (JSON).
- ``features``: (fingerprint, name, spec_hash) -> numeric ``value`` or categorical ``category``.
- ``labels``: (fingerprint, target, spec_hash) -> ``value`` (mean over seeds), ``std``, ``n``.
- ``predictions``: (fingerprint, task, spec_hash) -> per-example predictions (a 1-D array).
- ``specs``: spec_hash -> ``spec_id``, kind and what made it (name, source file, dtype, the
  command that computes it), written by every stage that writes values.
- ``targets``: target -> whether higher is better, when a user said so.

Features and labels are keyed by the checkpoint's fingerprint (a content hash), so a
checkpoint whose weights changed never inherits its old numbers, and by the hash of the
spec that produced them, so a changed spec never overwrites old numbers in place.

**Reading never mixes specs.** Every value belongs to a ``spec_id``: its spec hash, except
for values whose hash also covers something of the one checkpoint (a window feature's hash
covers its member checkpoints), whose ``spec_id`` is the hash without it. A reader either
names the ``spec_id`` of every feature it wants (a trained model does: it reads exactly
what it was trained on), or lets :meth:`Store.feature_frame` choose one per feature name for
the checkpoints at hand: the spec with values for the most of them, the newest on a tie.
Values of any other spec are not read; the choice and the alternatives are on the frame.

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

SCHEMA_VERSION = 3

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
    # v3: what each spec hash means, so that readers select by spec and errors name the command;
    # the direction of targets a user set explicitly.
    """
    CREATE TABLE specs (
        spec_hash   TEXT PRIMARY KEY,
        spec_id     TEXT NOT NULL,
        kind        TEXT NOT NULL,
        info        TEXT NOT NULL DEFAULT '{}',
        created_at  REAL NOT NULL
    );
    CREATE TABLE targets (
        target           TEXT PRIMARY KEY,
        higher_is_better INTEGER NOT NULL
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
    specs: dict[str, str] = field(default_factory=dict)  # feature -> the spec_id its values come from
    # features whose checkpoints had values under several specs: {feature: {spec_id: n checkpoints}}
    spec_choices: dict[str, dict[str, int]] = field(default_factory=dict)

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
            dict(self.specs),
            {k: dict(v) for k, v in self.spec_choices.items()},
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

    # -- specs ----------------------------------------------------------------------------
    def put_spec(self, spec_hash: str, *, kind: str, spec_id: str | None = None, **info) -> None:
        """Record what ``spec_hash`` means: its ``spec_id`` (default: itself), its kind
        (indicator, sft, import-table, lm-eval, zoo, stability) and ``info`` such as ``name``,
        ``source``, ``dtype`` and ``command`` (what computes it; ``{ckpt}`` stands for the checkpoint)."""
        self.conn.execute(
            "INSERT INTO specs(spec_hash, spec_id, kind, info, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(spec_hash) DO UPDATE SET spec_id=excluded.spec_id, kind=excluded.kind, info=excluded.info",
            (spec_hash, spec_id or spec_hash, kind, json.dumps(info, sort_keys=True, default=str), time.time()))

    def spec_info(self, spec_id: str) -> dict:
        """``{"spec_id", "kind", "name", "source", "dtype", "command", ...}`` of a spec (the newest
        hash registered under it); ``{"spec_id", "kind": "unknown"}`` for values written before
        ckptsel recorded specs."""
        row = self.conn.execute("SELECT kind, info FROM specs WHERE spec_id=? OR spec_hash=? "
                                "ORDER BY rowid DESC LIMIT 1", (spec_id, spec_id)).fetchone()
        if row is None:
            return {"spec_id": spec_id, "kind": "unknown"}
        return {"spec_id": spec_id, "kind": row[0], **json.loads(row[1])}

    def spec_ids(self, prefix: str) -> list[str]:
        """Spec ids that start with ``prefix`` or whose name equals it (for ``--spec``)."""
        rows = self.conn.execute("SELECT DISTINCT spec_id, info FROM specs").fetchall()
        found = {sid for sid, info in rows if sid.startswith(prefix) or json.loads(info).get("name") == prefix}
        for table in ("features", "labels"):  # values written before specs were recorded
            found |= {r[0] for r in self.conn.execute(
                f"SELECT DISTINCT spec_hash FROM {table} WHERE spec_hash LIKE ? || '%' AND spec_hash NOT IN "
                "(SELECT spec_hash FROM specs)", (prefix,))}
        return sorted(found)

    def _rows(self, table: str, fingerprints: Sequence[str] | None) -> list[tuple]:
        """The newest row per (fingerprint, name, spec_id): ``(fingerprint, name, spec_id, rowid, *values)``,
        values ``kind, value, category`` for features and ``value, std, n`` for labels."""
        key, cols = ("name", "f.kind, f.value, f.category") if table == "features" else ("target", "f.value, f.std, f.n")
        sql = (f"SELECT f.fingerprint, f.{key}, COALESCE(s.spec_id, f.spec_hash), f.rowid, {cols} "
               f"FROM {table} f LEFT JOIN specs s ON s.spec_hash = f.spec_hash")
        if fingerprints is not None and len(set(fingerprints)) <= 500:
            wanted = sorted(set(fingerprints))
            rows = self.conn.execute(sql + f" WHERE f.fingerprint IN ({','.join('?' * len(wanted))})",
                                     wanted).fetchall()
        else:
            rows = self.conn.execute(sql).fetchall()
            if fingerprints is not None:
                wanted_set = set(fingerprints)
                rows = [r for r in rows if r[0] in wanted_set]
        newest: dict[tuple, tuple] = {}
        for r in rows:
            k = r[:3]
            if k not in newest or r[3] > newest[k][3]:
                newest[k] = r
        return list(newest.values())

    @staticmethod
    def _choose_specs(rows: list[tuple], wanted: dict[str, str] | None
                      ) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
        """Per name, the spec_id to read (``wanted``'s, else the one with the most checkpoints,
        the newest on a tie) and, for names seen under several specs, the counts of each."""
        counts: dict[str, dict[str, list]] = {}
        for fp, name, sid, rowid, *_ in rows:
            c = counts.setdefault(name, {}).setdefault(sid, [0, 0])
            c[0] += 1
            c[1] = max(c[1], rowid)
        if wanted is not None:
            chosen = {n: sid for n, sid in wanted.items() if sid in counts.get(n, {})}
        else:
            chosen = {n: max(by_spec, key=lambda sid: tuple(by_spec[sid])) for n, by_spec in counts.items()}
        choices = {n: {sid: c[0] for sid, c in by_spec.items()} for n, by_spec in counts.items() if len(by_spec) > 1}
        return chosen, choices

    def feature_frame(self, ids: Sequence[str] | None = None, *, specs: dict[str, str] | None = None) -> FeatureFrame:
        """The features of the given checkpoints (all when None), one spec per feature.

        ``specs`` ({feature: spec_id}) reads exactly those features from exactly those specs
        (a feature without a value under its spec is missing); without it, every feature is read
        from the spec with values for the most of these checkpoints (the newest on a tie).
        The frame's ``specs`` says which spec each feature came from and ``spec_choices`` which
        features had values under several."""
        ckpts = self.checkpoints(ids)
        fps = [c.fingerprint for c in ckpts]
        rows = self._rows("features", fps)
        chosen, choices = self._choose_specs(rows, specs)
        rows = [r for r in rows if chosen.get(r[1]) == r[2]]
        kinds: dict[str, str] = {}
        for _, name, _, _, kind, _, _ in rows:
            kinds.setdefault(name, kind)
        numeric_names = sorted(n for n, k in kinds.items() if k == "numeric")
        categorical_names = sorted(n for n, k in kinds.items() if k == "categorical")
        row_of: dict[str, list[int]] = {}
        for i, fp in enumerate(fps):
            row_of.setdefault(fp, []).append(i)
        num_col = {n: j for j, n in enumerate(numeric_names)}
        cat_col = {n: j for j, n in enumerate(categorical_names)}
        numeric = np.full((len(fps), len(numeric_names)), np.nan)
        categorical = np.full((len(fps), len(categorical_names)), None, dtype=object)
        for fp, name, _, _, kind, value, category in rows:
            if kind == "numeric" and name in num_col:
                numeric[row_of[fp], num_col[name]] = np.nan if value is None else value
            elif kind == "categorical" and name in cat_col:
                categorical[row_of[fp], cat_col[name]] = category
        used = {n: chosen[n] for n in kinds}
        return FeatureFrame([c.id for c in ckpts], numeric_names, numeric, categorical_names, categorical,
                            used, {n: c for n, c in choices.items() if n in kinds})

    def feature_values(self, fingerprint: str) -> list[dict]:
        """Every stored value of one checkpoint, one per (feature, spec), sorted by name:
        ``{"name", "value", "spec", "spec_hash", "kind"}`` (value is the number or the category)."""
        rows = self.conn.execute(
            "SELECT f.name, f.kind, f.value, f.category, COALESCE(s.spec_id, f.spec_hash), f.spec_hash, f.rowid "
            "FROM features f LEFT JOIN specs s ON s.spec_hash = f.spec_hash WHERE f.fingerprint=?",
            (fingerprint,)).fetchall()
        newest: dict[tuple, tuple] = {}
        for r in rows:
            if (r[0], r[4]) not in newest or r[6] > newest[(r[0], r[4])][6]:
                newest[(r[0], r[4])] = r
        return [{"name": n, "value": v if k == "numeric" else c, "spec": sid, "spec_hash": h, "kind": k}
                for n, k, v, c, sid, h, _ in sorted(newest.values(), key=lambda r: (r[0], r[6]))]

    def label_set(self, target: str, ids: Sequence[str] | None = None, *, spec: str | None = None) -> "LabelSet":
        """The values of label ``target`` under one spec (``spec``, else the one with the most
        checkpoints, the newest on a tie), for checkpoints with a non-missing value."""
        ckpts = self.checkpoints(ids)
        by_fp: dict[str, list[str]] = {}
        for c in ckpts:
            by_fp.setdefault(c.fingerprint, []).append(c.id)
        rows = [r for r in self._rows("labels", list(by_fp)) if r[1] == target and r[4] is not None]
        chosen, choices = self._choose_specs(rows, None if spec is None else {target: spec})
        sid = chosen.get(target)
        values = {cid: r[4] for r in rows if r[2] == sid for cid in by_fp[r[0]]}
        return LabelSet(target, sid, {c.id: values[c.id] for c in ckpts if c.id in values},
                        choices.get(target, {}))

    def labels(self, target: str, ids: Sequence[str] | None = None, *, spec: str | None = None) -> dict[str, float]:
        """``{checkpoint id: value}`` of label ``target`` under one spec (see :meth:`label_set`)."""
        return self.label_set(target, ids, spec=spec).values

    def set_direction(self, target: str, higher_is_better: bool) -> None:
        self.conn.execute("INSERT OR REPLACE INTO targets(target, higher_is_better) VALUES (?, ?)",
                          (target, int(higher_is_better)))

    def direction(self, target: str) -> bool | None:
        """True/False when a user set whether higher ``target`` is better, else None."""
        row = self.conn.execute("SELECT higher_is_better FROM targets WHERE target=?", (target,)).fetchone()
        return None if row is None else bool(row[0])

    def put_predictions(self, fingerprint: str, task: str, predictions: np.ndarray, *, spec_hash: str) -> None:
        """Per-example predictions of one task (e.g. the chosen answer index per example),
        stored compactly as raw bytes of a 1-D array."""
        arr = np.ascontiguousarray(predictions).ravel()
        self.conn.execute(
            "INSERT OR REPLACE INTO predictions(fingerprint, task, spec_hash, dtype, data, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)", (fingerprint, task, spec_hash, arr.dtype.str, arr.tobytes(), time.time()))

    def predictions(self, task: str, fingerprints: Sequence[str] | None = None, *,
                    spec: str | None = None) -> dict[str, np.ndarray]:
        """``{fingerprint: array}`` of the newest stored predictions of ``task`` (under the
        spec_id ``spec`` only, when given: the spec of the feature they explain)."""
        rows = self.conn.execute(
            "SELECT p.fingerprint, p.dtype, p.data, COALESCE(s.spec_id, p.spec_hash) FROM predictions p "
            "LEFT JOIN specs s ON s.spec_hash = p.spec_hash WHERE p.task=? ORDER BY p.rowid", (task,)).fetchall()
        wanted = None if fingerprints is None else set(fingerprints)
        return {fp: np.frombuffer(data, dtype=np.dtype(dt)).copy() for fp, dt, data, sid in rows
                if (wanted is None or fp in wanted) and (spec is None or sid == spec)}

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


@dataclass
class LabelSet:
    """The values of one label under one spec: ``values`` {checkpoint id: value}, ``spec`` the
    spec_id they come from, ``spec_choices`` {spec_id: n checkpoints} when there were several."""

    target: str
    spec: str | None
    values: dict[str, float]
    spec_choices: dict[str, int]


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
