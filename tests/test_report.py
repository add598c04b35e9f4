"""`ckptsel report`: a real workspace (store, saved evaluations, a model registered in MLflow),
the page written by the CLI, and its numbers checked against the saved evaluation JSON and
against MTV computed here by hand from the table's rows."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
import sys
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from PIL import Image

from ckptsel.cli import main
from ckptsel.errors import CkptselError
from ckptsel.evaluation import evaluate
from ckptsel.report import build_report, is_perplexity
from ckptsel.store import Store
from ckptsel.tables import import_table
from ckptsel.training import group_values, labelled_table, train
from ckptsel.workspace import Workspace
from helpers_tables import FOREIGN_ENV

TARGET = "sft/mc/acc"
RUNS, STEPS = 4, (0, 100, 400, 1600, 6400)
PPL, KSHOT, CONST = "ppl/web/token_perplexity", "kshot/qa/acc", "learning_rate"


def make_rows() -> list[dict]:
    """4 runs x 5 steps; the perplexity falls and the k-shot score rises along each run, the
    learning rate is constant within a run (so it is not an indicator over steps)."""
    rng = random.Random(7)
    rows = []
    for r in range(RUNS):
        for step in STEPS:
            q = math.log1p(step) * (0.4 + 0.15 * r) + rng.gauss(0, 0.3)
            rows.append({"model_id": f"r{r}@{step}", "run": f"run-{r}", "step": step,
                         PPL: round(40 * math.exp(-0.25 * q) + rng.gauss(0, 0.4), 4),
                         KSHOT: round(0.25 + 0.05 * q + rng.gauss(0, 0.03), 4),
                         CONST: [1e-4, 3e-4, 1e-3, 3e-3][r],
                         TARGET: round(0.3 + 0.04 * q + rng.gauss(0, 0.02), 4)})
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def mtv_by_hand(rows: list[dict], run: str, column: str) -> float:
    xs = [r[column] for r in sorted((r for r in rows if r["run"] == run), key=lambda r: r["step"])]
    return sum(abs(b - a) for a, b in zip(xs, xs[1:])) / (len(xs) - 1)


class Page(HTMLParser):
    """The parts of the page the tests read: image sources and table cells with their data-* keys."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[str] = []
        self.cells: list[tuple[dict, dict, str]] = []  # (row attrs, cell attrs, text)
        self._row: dict = {}
        self._cell: dict | None = None
        self._text = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "tr":
            self._row = attrs
        elif tag == "td":
            self._cell, self._text = attrs, ""

    def handle_data(self, data):
        if self._cell is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append((self._row, self._cell, self._text.strip()))
            self._cell = None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Import, evaluate (random:0.6 and group:run, saved), train and register, then
    `ckptsel report --json`, all in this process (a CLI subprocess would pay mlflow's import
    again). MLflow's process state is restored afterwards."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    base = tmp_path_factory.mktemp("report")
    rows = make_rows()
    ws = Workspace.resolve(base / "ws").ensure()
    saved_uri = getattr(tracking_utils, "_tracking_uri", None)
    saved_path = list(sys.path)
    with pytest.MonkeyPatch.context() as mp:
        for var in FOREIGN_ENV:
            mp.delenv(var, raising=False)
        try:
            with Store(ws.db_path) as store:
                import_table(store, write(base / "zoo.csv", rows), id_column="model_id", labels=[TARGET],
                             run_column="run", step_column="step")
                table = labelled_table(store, TARGET)
            for split, repeats in (("random:0.6", 3), ("group:run", 4)):
                groups = group_values(table, "run") if split.startswith("group") else None
                ws.save_evaluation(evaluate(table.frame, table.y, target=TARGET, split=split,
                                            repeats=repeats, groups=groups))
            trained = train(ws, TARGET, name="mc", cv_repeats=0)
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                assert main(["--workspace", str(ws.root), "report", "--json"]) == 0
        finally:
            mlflow.set_tracking_uri(saved_uri)
            sys.path[:] = saved_path
    return {"ws": ws, "rows": rows, "out": json.loads(stdout.getvalue()), "run_id": trained["registry"]["run_id"]}


def test_page_references_only_images_that_open(built):
    out = built["out"]
    page = Path(out["html"])
    assert page == built["ws"].root / "report" / "index.html" and page.is_file()
    parsed = Page(page.read_text())
    on_disk = sorted(p.name for p in page.parent.glob("*.png"))
    assert sorted(parsed.images) == on_disk == sorted(Path(p).name for p in out["images"])
    # accuracy + gap for the one target, importance, indicators and labels over steps
    assert len(on_disk) == 5
    for name in on_disk:
        with Image.open(page.parent / name) as im:
            im.verify()
        with Image.open(page.parent / name) as im:
            w, h = im.size
        assert 400 <= w <= 2000 and 250 <= h <= 3000, (name, im.size)
    text = page.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text


def test_accuracy_table_equals_saved_evaluations(built):
    saved = {}
    for f in (built["ws"].root / "evaluations").glob("*.json"):
        r = json.loads(f.read_text())
        saved[r["split"]] = r
    assert set(saved) == {"random:0.6", "group:run"}
    cells = [(row, cell, text) for row, cell, text in Page(Path(built["out"]["html"]).read_text()).cells
             if "data-split" in cell]
    seen = set()
    for row, cell, text in cells:
        r = saved[cell["data-split"]]
        entry = r["predictor"] if row["data-name"] == "predictor" else r["baselines"][row["data-name"]]
        assert text == f"{entry['accuracy_mean']:.3f} ± {entry['accuracy_std']:.3f}"
        seen.add((row["data-name"], cell["data-split"]))
    features = {"step", PPL, KSHOT, CONST}
    assert seen == {(n, s) for n in features | {"predictor"} for s in saved}


def test_mtv_table_equals_mtv_by_hand(built):
    rows = built["rows"]
    cells = [(row, cell, text) for row, cell, text in Page(Path(built["out"]["html"]).read_text()).cells
             if "data-run" in row]
    got = {(row["data-run"], cell["data-name"]): float(text) for row, cell, text in cells}
    # the constant learning rate and the step itself are not indicators over steps
    assert {name for _, name in got} == {PPL, KSHOT, f"label: {TARGET}"}
    for r in range(RUNS):
        run = f"run-{r}"
        for name, column in ((PPL, PPL), (KSHOT, KSHOT), (f"label: {TARGET}", TARGET)):
            assert got[(run, name)] == pytest.approx(mtv_by_hand(rows, run, column), rel=1e-3)


def test_report_attached_to_training_run(built):
    ws, out = built["ws"], built["out"]
    assert out["mlflow_run_id"] == built["run_id"]
    from ckptsel import exports

    registry = exports.resolve(ws, "mc").registry
    assert registry["run_id"] == built["run_id"]
    uri = f"sqlite:///{ws.mlflow_db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    logged = {Path(a.path).name for a in client.list_artifacts(built["run_id"], "report")}
    assert logged == {"index.html", *(Path(p).name for p in out["images"])}


def test_missing_pieces_say_what_to_run(tmp_path, capsys):
    ws = Workspace.resolve(tmp_path / "empty").ensure()
    with pytest.raises(CkptselError, match="ckptsel evaluate .*ckptsel train"):
        build_report(ws, log_to_mlflow=False)
    assert main(["--workspace", str(ws.root), "report", "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nothing to report" in err

    # an evaluation only: no model, no runs with steps -> a page that says what to run
    rows = [{"model_id": f"m{i}", "inv_clm_ppl": 0.1 * ((i * 7) % 10), "score": float(i)} for i in range(10)]
    with Store(ws.db_path) as store:
        import_table(store, write(tmp_path / "t.csv", rows), id_column="model_id", labels=["score"])
        table = labelled_table(store, "score")
    ws.save_evaluation(evaluate(table.frame, table.y, target="score", split="random:0.6", repeats=2))
    page = build_report(ws, log_to_mlflow=False)
    text = page.read_text()
    assert "ckptsel train --target score" in text and "--step-column" in text
    assert sorted(Page(text).images) == sorted(p.name for p in page.parent.glob("*.png"))
    assert is_perplexity("inv_clm_ppl") and not is_perplexity("ppl_sc/web/bits_per_byte")


def test_out_folder_with_other_files_is_refused(tmp_path):
    ws = Workspace.resolve(tmp_path / "ws").ensure()
    ws.save_evaluation({"target": "y", "split": "random:0.6", "repeats": 1, "n_checkpoints": 4,
                        "pairs_per_repeat": 1, "predictor": {"accuracy_mean": 1.0, "accuracy_std": 0.0},
                        "baselines": {}, "accuracy_by_gap_quartile": []})
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(CkptselError, match="holds other files"):
        build_report(ws, out=out, log_to_mlflow=False)
    assert (out / "notes.txt").read_text() == "keep me"
