"""Exported predictors by name and version: the one meaning of ``NAME``, ``NAME@ALIAS`` and ``NAME/VERSION``.

    <workspace>/models/<name>/<version>/   model.txt, schema.json, registry.json (the MLflow run and version)
    <workspace>/models/<name>/aliases.json {"champion": "3"}: what `ckptsel train --alias` points at

``ckptsel train`` registers the model in MLflow first and exports it under the version MLflow
gave it, then moves the alias in both places, so the export and the registry never disagree.
``NAME@ALIAS`` is the version the alias points at, ``NAME/VERSION`` that version, and a bare
``NAME`` means ``NAME@champion`` when that alias is set, else the newest version. ``predict-pair``,
``rank``, ``report`` and ``serve`` all resolve through :func:`resolve`, so one name is one model
version everywhere. (An alias moved by hand in the MLflow UI is not seen here until the next
``ckptsel train``; ``serve`` of a model with no export in this workspace asks MLflow directly.)

An export of an older ckptsel (``models/<name>/schema.json`` directly) is version ``0``.
Light side: no MLflow import here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ckptsel.errors import CkptselError
from ckptsel.predictor import SCHEMA_FILE  # lightgbm is imported only when a model is fitted or loaded
from ckptsel.workspace import Workspace, check_model_name
ALIASES_FILE = "aliases.json"
DEFAULT_ALIAS = "champion"
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


@dataclass(frozen=True)
class ModelRef:
    """One exported model version."""

    name: str
    version: str
    alias: str | None  # the alias it was reached through, if any
    directory: Path

    @property
    def registry(self) -> dict | None:
        """The MLflow facts of this version (``registry.json``), None when it was not registered."""
        path = self.directory / "registry.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def __str__(self) -> str:
        return f"{self.name}/{self.version}" + (f" (@{self.alias})" if self.alias else "")


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME@ALIAS`` / ``NAME/VERSION`` / ``NAME`` as ``(name, alias, version)``."""
    name, sep, alias = ref.partition("@")
    if sep:
        check_model_name(name)
        if not _ALIAS.fullmatch(alias):
            raise CkptselError(f"model {ref!r}: alias {alias!r} must be letters, digits, '-' or '_'")
        return name, alias, None
    name, sep, version = ref.partition("/")
    if sep and not version.isdigit():
        raise CkptselError(f"model {ref!r}: use NAME, NAME@ALIAS or NAME/VERSION (a number)")
    return check_model_name(name), None, version or None


def names(ws: Workspace) -> list[str]:
    """Models with at least one exported version."""
    if not ws.models_dir.is_dir():
        return []
    return sorted(d.name for d in ws.models_dir.iterdir() if d.is_dir() and versions(ws, d.name))


def versions(ws: Workspace, name: str) -> list[str]:
    """Exported versions of ``name``, oldest first."""
    root = ws.models_dir / check_model_name(name)
    if not root.is_dir():
        return []
    found = [d.name for d in root.iterdir() if d.name.isdigit() and (d / SCHEMA_FILE).is_file()]
    if (root / SCHEMA_FILE).is_file():  # an export of an older ckptsel
        found.append("0")
    return sorted(set(found), key=int)


def aliases(ws: Workspace, name: str) -> dict[str, str]:
    path = ws.models_dir / check_model_name(name) / ALIASES_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def version_dir(ws: Workspace, name: str, version: str) -> Path:
    root = ws.models_dir / check_model_name(name)
    return root if version == "0" and (root / SCHEMA_FILE).is_file() else root / str(int(version))


def set_alias(ws: Workspace, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` (written atomically)."""
    table = {**aliases(ws, name), alias: str(version)}
    path = ws.models_dir / check_model_name(name) / ALIASES_FILE
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(table, indent=2, sort_keys=True))
    tmp.replace(path)


def resolve(ws: Workspace, ref: str | None = None) -> ModelRef:
    """The model version ``ref`` means (see the module); without ``ref``, the only model's."""
    if not ref:
        found = names(ws)
        if not found:
            raise CkptselError(f"no trained predictor in {ws.models_dir}; train one with "
                               "`ckptsel train --target T` (see `ckptsel list --targets`)")
        if len(found) > 1:
            raise CkptselError(f"{len(found)} predictors in {ws.models_dir} ({', '.join(found)}); "
                               "choose one with --model NAME[@ALIAS|/VERSION]")
        ref = found[0]
    name, alias, version = parse_ref(ref)
    have = versions(ws, name)
    if not have:
        raise CkptselError(f"no predictor named {name!r} in {ws.models_dir} (have: "
                           f"{', '.join(names(ws)) or 'none'}); train it with `ckptsel train --target T --name {name}`")
    table = aliases(ws, name)
    if alias is not None:
        if alias not in table:
            raise CkptselError(f"model {name!r} has no alias {alias!r} (aliases: "
                               f"{', '.join(f'{a} -> {v}' for a, v in sorted(table.items())) or 'none'}); "
                               f"use {name}/VERSION (versions {', '.join(have)}) or train with --alias {alias}")
        version = table[alias]
    elif version is None:
        alias = DEFAULT_ALIAS if DEFAULT_ALIAS in table else None
        version = table[DEFAULT_ALIAS] if alias else have[-1]
    if version not in have:
        raise CkptselError(f"model {name!r} has no exported version {version} in {ws.models_dir / name} "
                           f"(versions: {', '.join(have)})")
    return ModelRef(name, version, alias, version_dir(ws, name, version))
