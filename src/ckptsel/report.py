"""``ckptsel report``: one static HTML page with PNG plots of what the workspace knows.

The page reads only what earlier stages saved: the evaluation results in
``<workspace>/evaluations/`` (``ckptsel evaluate``), the exported predictor in
``models/<name>/`` with its ``registry.json`` (``ckptsel train``) and the store (features and
labels of checkpoints with a run and a step). It shows

1. ``fig-accuracy-<target>.png`` (target with '/' as '-'): pairwise accuracy on held-out checkpoints of the learned
   predictor and of every single-indicator baseline, mean ± std over the split's repeats, one
   panel per split (e.g. ``group:run`` beside ``random:0.6``); plain perplexity indicators
   (names with "ppl" or "perplexity") in orange, chance (0.5) dashed;
2. ``fig-gap-<target>.png``: the predictor's accuracy by quartile of the outcome gap
   |y_a − y_b| of the test pairs (near-ties are hard for every ranker);
3. ``fig-importance.png``: the model's feature importance (``PairwisePredictor.feature_importance``,
   shares that sum to 1), top ``TOP_IMPORTANCE``;
4. ``fig-indicators-over-steps.png`` and ``fig-labels-over-steps.png``: indicators that change
   along a run, and the fine-tuning labels, over steps, one line per run, with each run's mean
   total variation MTV = 1/(m−1) · Σ_t |x_{t+1} − x_t| (Nishida, Isonuma & Oda, *Instability in
   Downstream Task Performance During LLM Pretraining*, arXiv 2510.04848, §2; computed by
   ``ckptsel.stability.mean_total_variation``) in the legend and in a table.

Output folder (default ``<workspace>/report/``)::

    index.html        plain HTML, inline CSS, no script, no network
    fig-*.png         the plots (matplotlib, Agg)

The folder is also logged as the ``report/`` artifacts of the model's MLflow training run (the
run id in ``models/<name>/registry.json``). A missing piece (no evaluation, no model, no runs
with steps) becomes a line on the page saying which command produces it.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ckptsel.errors import CkptselError
from ckptsel.workspace import Workspace

TOP_IMPORTANCE = 15
MAX_BASELINES = 20
MAX_INDICATOR_PANELS = 9
MAX_LABEL_PANELS = 3
LEGEND_RUNS = 8  # more runs than this: one shared colour legend, MTV per run in the table only
INDICATOR_PREFIXES = ("ppl/", "ppl_sc/", "kshot/")
PREDICTOR_COLOR, BASELINE_COLOR, PPL_COLOR = "#1f4e96", "#9aa5b1", "#e07b00"


@dataclass
class Report:
    html: Path
    images: list[Path]
    mlflow_run_id: str | None = None
    notes: list[str] = field(default_factory=list)


def is_perplexity(name: str) -> bool:
    """Plain perplexity indicators, marked on the plots: names containing "ppl" or "perplexity",
    except span-corruption perplexities (``ppl_sc/...``, ``sc_ppl``), which Zeng et al.
    (arXiv 2504.12491) propose as the better-behaved alternative."""
    low = name.lower()
    return ("ppl" in low or "perplexity" in low) and not ("ppl_sc" in low or "sc_ppl" in low)


def short(name: str, width: int = 44) -> str:
    """Shorten a long feature name in the middle, keeping its start and its metric at the end."""
    if len(name) <= width:
        return name
    tail = width // 2
    return name[: width - tail - 1] + "…" + name[-tail:]


def fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def fmt_acc(entry: dict) -> str:
    """``accuracy_mean ± accuracy_std`` with three decimals, as in the page's tables."""
    return f"{entry['accuracy_mean']:.3f} ± {entry['accuracy_std']:.3f}"


# -- what the workspace holds ---------------------------------------------------------------------
def _models(ws: Workspace) -> list[dict]:
    """Exported predictors (the version each name means), newest first: {"name", "version", "target",
    "trained_at", "dir"}."""
    from ckptsel import exports

    out = []
    for name in exports.names(ws):
        found = exports.resolve(ws, name)
        try:
            meta = json.loads((found.directory / exports.SCHEMA_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        out.append({"name": name, "version": found.version, "target": meta.get("target"),
                    "trained_at": meta.get("trained_at") or found.directory.stat().st_mtime, "dir": found.directory})
    return sorted(out, key=lambda m: -m["trained_at"])


def _pick_model(ws: Workspace, name: str | None, target: str | None) -> dict | None:
    from ckptsel import exports

    if name is not None:
        found = exports.resolve(ws, name)
        meta = json.loads((found.directory / exports.SCHEMA_FILE).read_text())
        return {"name": found.name, "version": found.version, "target": meta.get("target"),
                "trained_at": meta.get("trained_at"), "dir": found.directory}
    models = _models(ws)
    if target is not None:
        models = [m for m in models if m["target"] == target]
    return models[0] if models else None


def _evaluations(ws: Workspace, target: str | None) -> dict[str, list[dict]]:
    """Saved evaluations grouped by target, the newest result per split, group splits first."""
    by_target: dict[str, dict[str, dict]] = {}
    for result in ws.evaluations():  # oldest first: newer ones replace older ones
        if target is None or result.get("target") == target:
            by_target.setdefault(result["target"], {})[result["split"]] = result
    return {t: sorted(splits.values(), key=lambda r: (not r["split"].startswith("group:"), r["split"]))
            for t, splits in by_target.items()}


@dataclass
class RunSeries:
    """Checkpoints with a run and a step, ordered by step within each run."""

    runs: dict[str, list[int]]  # run -> row indices into ids / steps, ordered by (step, id)
    ids: list[str]
    steps: np.ndarray
    frame: object  # FeatureFrame over ids
    labels: dict[str, dict[str, float]]  # target -> {checkpoint id: value}


def _run_series(ws: Workspace, targets: list[str]) -> RunSeries | None:
    from ckptsel.store import Store

    if not ws.db_path.exists():
        return None
    with Store(ws.db_path, create=False) as store:
        ckpts = sorted((c for c in store.checkpoints() if c.run and c.step is not None),
                       key=lambda c: (c.run, c.step, c.id))
        if not ckpts:
            return None
        frame = store.feature_frame([c.id for c in ckpts])
        targets = (targets + [t for t in store.targets() if t not in targets])[:MAX_LABEL_PANELS]
        labels = {t: store.labels(t, [c.id for c in ckpts]) for t in targets}
    runs: dict[str, list[int]] = {}
    for i, c in enumerate(ckpts):
        runs.setdefault(c.run, []).append(i)
    runs = {r: rows for r, rows in runs.items() if len(rows) >= 2}
    if not runs:
        return None
    return RunSeries(runs, [c.id for c in ckpts], np.array([c.step for c in ckpts], dtype=float), frame, labels)


def varying_features(series: RunSeries) -> list[str]:
    """Numeric features (not ``step``, not stored stability features) whose value changes
    between the checkpoints of at least one run."""
    from ckptsel.stability import default_features

    out = []
    for name in default_features(series.frame.numeric_names):
        col = series.frame.column(name)
        for rows in series.runs.values():
            x = col[rows]
            x = x[~np.isnan(x)]
            if x.size >= 2 and np.ptp(x) > 0:
                out.append(name)
                break
    return out


def choose_indicators(names: list[str], importance: dict[str, float] | None,
                      limit: int = MAX_INDICATOR_PANELS) -> list[str]:
    """The model's most important features first, then perplexity / PPL-SC / k-shot indicators,
    then the rest alphabetically; at most ``limit``."""
    rank = {f: i for i, f in enumerate(importance or {})}
    return sorted(names, key=lambda n: (n not in rank, rank.get(n, 0), not n.startswith(INDICATOR_PREFIXES),
                                        n))[:limit]


def run_mtv(values: np.ndarray, rows: list[int]) -> float | None:
    from ckptsel.stability import mean_total_variation

    return mean_total_variation([None if v != v else float(v) for v in values[rows]])


# -- plots ----------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    """A figure without pyplot (no global state, no GUI); ``savefig`` to PNG renders with Agg."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=110)
    return path


def plot_accuracy(results: list[dict], path: Path) -> Path:
    """Horizontal bars, one panel per split: predictor on top, baselines by accuracy."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    first = results[0]
    names = sorted(first["baselines"], key=lambda f: -first["baselines"][f]["accuracy_mean"])
    shown = names[:MAX_BASELINES] + [f for f in names[MAX_BASELINES:] if is_perplexity(f)]
    rows = ["predictor"] + shown
    height = 0.3 * len(rows) + 1.6
    fig = _figure(max(7.5, 3.4 * len(results) + 2.6), height)
    axes = fig.subplots(1, len(results), sharey=True, squeeze=False)[0]
    y = np.arange(len(rows))[::-1]
    for ax, result in zip(axes, results):
        entries = [result["predictor"]] + [result["baselines"].get(f) for f in shown]
        mean = [e["accuracy_mean"] if e else np.nan for e in entries]
        std = [e["accuracy_std"] if e else 0.0 for e in entries]
        colors = [PREDICTOR_COLOR] + [PPL_COLOR if is_perplexity(f) else BASELINE_COLOR for f in shown]
        ax.barh(y, mean, xerr=std, color=colors, height=0.7, error_kw={"lw": 0.8, "capsize": 2})
        ax.axvline(0.5, color="black", ls="--", lw=0.8)
        ax.set_xlim(0, max(1.0, np.nanmax(np.add(mean, std)) + 0.02))  # room for the whole ± std bar
        ax.set_xticks(np.linspace(0, 1, 6))
        ax.set_title(f"split {result['split']} ({result['repeats']} repeats)", fontsize=9)
        ax.set_xlabel("pairwise accuracy on held-out checkpoints", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3, lw=0.5)
    axes[0].set_yticks(y, ["learned predictor"] + [short(f) for f in shown])
    axes[0].get_yticklabels()[0].set_fontweight("bold")
    more = len(names) - len(shown)
    fig.suptitle(f"{first['target']}: predictor vs single indicators"
                 + (f" (top {len(shown)} of {len(names)}; all in the table)" if more else ""), fontsize=10)
    fig.legend(handles=[Patch(color=PREDICTOR_COLOR, label="learned predictor"),
                        Patch(color=PPL_COLOR, label="plain perplexity indicator"),
                        Patch(color=BASELINE_COLOR, label="other single indicator"),
                        Line2D([], [], color="black", ls="--", lw=0.8, label="chance (0.5)")],
               loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    return _save(fig, path)


def plot_gap(results: list[dict], path: Path) -> Path:
    """Grouped bars: predictor accuracy per outcome-gap quartile, one colour per split."""
    fig = _figure(7.5, 3.8)
    ax = fig.subplots()
    width = 0.8 / len(results)
    x = np.arange(4)
    for k, result in enumerate(results):
        acc = [q["accuracy"] if q["accuracy"] is not None else np.nan for q in result["accuracy_by_gap_quartile"]]
        bars = ax.bar(x - 0.4 + width * (k + 0.5), acc, width * 0.92, label=f"split {result['split']}",
                      color=f"C{k}")
        ax.bar_label(bars, labels=[fmt(a, 2) for a in acc], fontsize=7, padding=2)
    ax.axhline(0.5, color="black", ls="--", lw=0.8, label="chance (0.5)")
    ax.set_xticks(x, ["Q1\nsmallest gaps", "Q2", "Q3", "Q4\nlargest gaps"], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("predictor pairwise accuracy", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3, lw=0.5)
    ax.set_title(f"{results[0]['target']}: predictor accuracy by outcome gap |y_a − y_b| of the test pair",
                 fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=len(results) + 1, fontsize=8,
               frameon=False)
    return _save(fig, path)


def plot_importance(importance: dict[str, float], model: str, target: str, path: Path) -> Path:
    from matplotlib.patches import Patch

    items = list(importance.items())[:TOP_IMPORTANCE][::-1]
    fig = _figure(7.5, 0.3 * len(items) + 1.4)
    ax = fig.subplots()
    bars = ax.barh([short(k) for k, _ in items], [v for _, v in items],
                   color=[PPL_COLOR if is_perplexity(k) else PREDICTOR_COLOR for k, _ in items])
    ax.bar_label(bars, labels=[f"{v:.3f}" for _, v in items], fontsize=7, padding=2)
    ax.set_xlim(0, max(v for _, v in items) * 1.15 or 1)
    ax.set_xlabel("share of the model's importance (tree gain and ridge weight; sums to 1)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.set_title(f"model {model} ({target}): top {len(items)} of {len(importance)} features", fontsize=10)
    ax.legend(handles=[Patch(color=PPL_COLOR, label="plain perplexity indicator"),
                       Patch(color=PREDICTOR_COLOR, label="other feature")], fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_over_steps(series: RunSeries, panels: list[tuple[str, np.ndarray]], title: str, path: Path) -> Path:
    """One panel per (name, values over series.ids), one line per run, each run's MTV in the
    legend (or, with many runs, one shared colour legend; the MTV per run is in the page's table)."""
    runs = list(series.runs)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    legend_rows = math.ceil(len(runs) / 2) if len(runs) <= LEGEND_RUNS else 0
    width = max(3.4 * ncols, 5.0 if legend_rows else 6.8)  # a lone panel is not a thumbnail
    shared_cols = max(1, int(width / 2.25))  # one shared legend entry is about 2.2 in wide
    fig = _figure(width, (2.9 + 0.17 * legend_rows) * nrows
                  + (0.4 if legend_rows else 0.3 + 0.2 * math.ceil(len(runs) / shared_cols)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    positive = series.steps[series.steps > 0]
    log_x = positive.size > 0 and positive.max() / positive.min() > 30
    cmap = "tab10" if len(runs) <= 10 else "tab20"
    import matplotlib

    colors = matplotlib.colormaps[cmap]
    for ax, (name, values) in zip(axes.flat, panels):
        mtvs = []
        for k, run in enumerate(runs):
            rows = series.runs[run]
            have = [i for i in rows if values[i] == values[i]]
            if not have:
                continue
            mtv = run_mtv(values, rows)
            mtvs.append(mtv)
            label = f"{short(run, 18)}: MTV {_mtv_text(mtv)}"
            ax.plot(series.steps[have], values[have], "o-", ms=2.5, lw=1.1, color=colors(k % colors.N),
                    label=label if len(runs) <= LEGEND_RUNS else run)
        present = values[~np.isnan(values)]
        if present.size and present.min() > 0 and present.max() / present.min() > 100:
            ax.set_yscale("log")
        if log_x:
            _log_steps(ax, series.steps)
        known = [m for m in mtvs if m is not None]
        median = f"   median MTV {np.median(known):.3g}" if known else ""
        ax.set_title(f"{short(name, 40)}\n{median.strip()}" if median else short(name, 40), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, lw=0.5)
        if len(runs) <= LEGEND_RUNS:  # below the panel: never over the lines
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, frameon=False,
                      handlelength=1.2, columnspacing=1.0)
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_visible(False)
        else:  # every panel: its legend sits below the label
            ax.set_xlabel("step" + (" (log)" if log_x else ""), fontsize=8, labelpad=1)
    if len(runs) > LEGEND_RUNS:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, [short(lab, 30) for lab in labels], loc="outside lower center",
                   ncols=shared_cols, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _log_steps(ax, steps: np.ndarray) -> None:
    """Logarithmic step axis; with a step 0, symlog (linear up to the first positive step) with
    ticks at 0 and at the decades, so that nothing crowds around zero."""
    positive = steps[steps > 0]
    if not (steps <= 0).any():
        ax.set_xscale("log")
        return
    from matplotlib.ticker import NullLocator

    lo, hi = float(positive.min()), float(positive.max())
    ax.set_xscale("symlog", linthresh=lo, linscale=0.4)
    decades = range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)
    ax.set_xticks([0] + [10 ** k for k in decades], ["0"] + [f"$10^{{{k}}}$" for k in decades])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(-0.1 * lo, hi * 1.3)


# -- the page -------------------------------------------------------------------------------------
CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 1080px; margin: 2em auto;
       padding: 0 1em; color: #1d232b; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #d5dbe1; }
.meta { color: #5b6673; font-size: 0.9em; }
.note { background: #fff6e5; border-left: 4px solid #e07b00; padding: 0.5em 0.8em; margin: 0.8em 0; }
.howto { color: #38424d; font-style: italic; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #e3e7eb; padding: 0.25em 0.7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.predictor th, tr.predictor td { font-weight: bold; background: #eef3fb; }
tr.ppl th { color: #b35f00; }
.scroll { overflow-x: auto; }
table.mtv th { vertical-align: bottom; font-size: 0.85em; max-width: 14em; overflow-wrap: anywhere; }
table.mtv th.run { white-space: nowrap; }
img { max-width: 100%; height: auto; border: 1px solid #e3e7eb; margin: 0.4em 0; }
code { background: #f1f3f5; padding: 0 0.25em; border-radius: 3px; }
"""


def _e(text) -> str:
    return html.escape(str(text))


def _note(text: str) -> str:
    """A 'what to run instead' note; ``text`` is already HTML."""
    return f'<p class="note">{text}</p>'


def _img(path: Path, alt: str) -> str:
    return f'<img src="{_e(path.name)}" alt="{_e(alt)}">'


def accuracy_table(target: str, results: list[dict]) -> str:
    """Predictor and every baseline (sorted by accuracy on the first split), one column per split."""
    first = results[0]
    names = sorted(first["baselines"], key=lambda f: -first["baselines"][f]["accuracy_mean"])
    head = "".join(f'<th>{_e(r["split"])}<br><small>{r["repeats"]} repeats, {r["n_checkpoints"]} checkpoints, '
                   f'{round(r["pairs_per_repeat"], 1):,} test pairs/repeat</small></th>' for r in results)
    lines = [f'<table class="accuracy" data-target="{_e(target)}"><tr><th>pairwise accuracy (mean ± std)</th>'
             f'{head}</tr>']

    def row(label: str, key: str, entries: list[dict | None], cls: str) -> str:
        cells = "".join(f'<td class="num" data-split="{_e(r["split"])}">{fmt_acc(e) if e else "–"}</td>'
                        for r, e in zip(results, entries))
        return f'<tr class="{cls}" data-name="{_e(key)}"><th>{_e(label)}</th>{cells}</tr>'

    lines.append(row("learned predictor", "predictor", [r["predictor"] for r in results], "predictor"))
    for f in names:
        lines.append(row(f"{f}" + ("  (plain perplexity)" if is_perplexity(f) else ""), f,
                         [r["baselines"].get(f) for r in results], "ppl" if is_perplexity(f) else "baseline"))
    lines.append("</table>")
    return "\n".join(lines)


def gap_table(results: list[dict]) -> str:
    lines = ['<table class="gap"><tr><th>split</th><th>quartile</th><th>outcome gap</th><th>test pairs</th>'
             '<th>predictor accuracy</th></tr>']
    for r in results:
        for q in r["accuracy_by_gap_quartile"]:
            gap = "–" if q["gap_min"] is None else f"{q['gap_min']:.4g} … {q['gap_max']:.4g}"
            lines.append(f'<tr><td>{_e(r["split"])}</td><td>Q{q["quartile"]}</td><td class="num">{gap}</td>'
                         f'<td class="num">{q["pairs"]}</td><td class="num">{fmt(q["accuracy"])}</td></tr>')
    lines.append("</table>")
    return "\n".join(lines)


def mtv_table(series: RunSeries, panels: list[tuple[str, np.ndarray]]) -> str:
    """MTV of every plotted score (columns) along every run (rows)."""
    head = "".join(f'<th data-name="{_e(n)}">{_e(n).replace("/", "/<wbr>")}</th>' for n, _ in panels)
    lines = [f'<div class="scroll"><table class="mtv"><tr><th>MTV per run</th>{head}</tr>']
    for run, rows in series.runs.items():
        cells = "".join(f'<td class="num" data-name="{_e(n)}">{_mtv_text(run_mtv(v, rows))}</td>'
                        for n, v in panels)
        lines.append(f'<tr data-run="{_e(run)}"><th class="run">{_e(run)}</th>{cells}</tr>')
    lines.append("</table></div>")
    return "\n".join(lines)


def _mtv_text(v: float | None) -> str:
    return "–" if v is None else f"{v:.4g}"


def _evaluate_hint(target: str) -> str:
    return (f"run <code>ckptsel evaluate --target {_e(target)} --split group:run</code> "
            f"(leave one run out) and <code>--split random:0.6</code>")


@dataclass
class _Sections:
    """The page's body as it is built: HTML pieces, the plots written, notes for the CLI."""

    out: Path
    body: list[str] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *html_pieces: str) -> None:
        self.body.extend(html_pieces)

    def missing(self, note: str, html_text: str) -> None:
        self.notes.append(note)
        self.body.append(_note(html_text))

    def figure(self, png: Path, how_to_read: str, alt: str) -> None:
        self.images.append(png)
        self.body += [f'<p class="howto">How to read: {how_to_read}</p>', _img(png, alt)]


def _evaluation_section(page: _Sections, t: str, results: list[dict] | None, have_runs: bool) -> None:
    page.add(f"<h2>Held-out evaluation: <code>{_e(t)}</code></h2>")
    if not results:
        page.missing(f"no saved evaluation for {t}", f"No saved evaluation for <code>{_e(t)}</code> yet: "
                     f"{_evaluate_hint(t)}, then rerun <code>ckptsel report</code>.")
        return
    page.add(f"<p>Pairs of held-out checkpoints with different <code>{_e(t)}</code>, split "
             f"{_e(', '.join(r['split'] for r in results))}. The learned predictor is fitted on the training "
             "checkpoints of each repeat; each single-indicator baseline ranks by one feature, its direction "
             "chosen on the same training checkpoints.</p>")
    if not any(r["split"].startswith("group:") for r in results):
        page.add(_note(("Only random splits: neighbouring checkpoints of one run can sit on both sides. "
                        f"For the stricter number, {_evaluate_hint(t)}.") if have_runs else
                       ("Only random splits. For a stricter number, leave one group out: <code>ckptsel "
                        f"evaluate --target {_e(t)} --split group:COLUMN</code> (a categorical feature such as "
                        "a data mix).")))
    page.add(accuracy_table(t, results))
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", t).strip("-") or "target"
    page.figure(plot_accuracy(results, page.out / f"fig-accuracy-{slug}.png"),
                "each bar is the share of held-out pairs a method orders correctly (± std over repeats); the "
                "blue bar is the learned predictor, orange bars are plain perplexities, and a bar left of the "
                "dashed line does worse than a coin.",
                f"pairwise accuracy of the predictor and the baselines for {t}")
    page.figure(plot_gap(results, page.out / f"fig-gap-{slug}.png"),
                "test pairs are cut into four equal groups by how far apart their outcomes are; pairs with a "
                "small gap are near-ties that no ranker can be sure about, so accuracy should rise from Q1 to Q4.",
                f"predictor accuracy by outcome gap for {t}")
    page.add(gap_table(results))


def _model_section(page: _Sections, chosen: dict | None, predictor, importance: dict | None,
                   registry: dict | None, target: str | None) -> None:
    page.add("<h2>The trained predictor</h2>")
    if chosen is None:
        page.missing("no trained model", "No trained predictor: run "
                     f"<code>ckptsel train --target {_e(target or 'T')}</code>, then rerun "
                     "<code>ckptsel report</code>.")
        return
    reg_text = (f"registered as <code>{_e(registry['model_uri'])}</code> (MLflow run "
                f"<code>{_e(registry['run_id'])}</code>)" if registry else "not registered in MLflow")
    page.add(f"<p>Model <code>{_e(chosen['name'])}</code> for <code>{_e(chosen['target'])}</code>, trained on "
             f"{predictor.n_train_checkpoints_} checkpoints ({predictor.n_train_pairs_} ordered pairs), "
             f"{len(importance)} features, {reg_text}.</p>")
    page.figure(plot_importance(importance, chosen["name"], chosen["target"], page.out / "fig-importance.png"),
                "a longer bar means the model leans more on that feature when it compares two checkpoints; it "
                "says nothing about the direction.", f"feature importance of {chosen['name']}")


def _steps_section(page: _Sections, series: RunSeries | None, importance: dict | None) -> None:
    page.add("<h2>Indicators and labels over pretraining steps</h2>")
    if series is None:
        page.missing("no runs with steps", "No run has two or more checkpoints with a step, so there is nothing "
                     "to plot over steps: import tables with <code>--run-column RUN</code> <code>--step-column "
                     "STEP</code>, or add run directories with <code>ckptsel add runs/NAME</code>.")
        return
    names = varying_features(series)
    picked = choose_indicators(names, importance)
    feature_panels = [(n, series.frame.column(n).astype(float)) for n in picked]
    label_panels = [(f"label: {t}", np.array([series.labels[t].get(c, np.nan) for c in series.ids]))
                    for t in series.labels if series.labels[t]]
    runs = list(series.runs)
    page.add(f"<p>{len(runs)} runs with steps ({_e(', '.join(short(r, 30) for r in runs[:6]))}"
             f"{', …' if len(runs) > 6 else ''}). MTV, the mean total variation "
             "1/(m−1) Σ |x<sub>t+1</sub> − x<sub>t</sub>| over a run's m checkpoints ordered by step, "
             "measures how much a score jumps between neighbouring checkpoints (Nishida, Isonuma &amp; Oda, "
             "<i>Instability in Downstream Task Performance During LLM Pretraining</i>, arXiv 2510.04848); "
             "it is in the units of the score.</p>")
    if not feature_panels:
        page.missing("no indicator changes along a run", "No numeric feature changes along any run. Compute "
                     "indicators on every checkpoint of a run with <code>ckptsel indicators --spec SPEC "
                     "runs/NAME</code>.")
    else:
        if len(names) > len(picked):
            page.add(f"<p>{len(picked)} of {len(names)} indicators that change along a run (the model's most "
                     "important first); see the others with <code>ckptsel stability --run RUN --plot "
                     "FILE.png</code>.</p>")
        page.figure(plot_over_steps(series, feature_panels, "indicators over steps, one line per run",
                                    page.out / "fig-indicators-over-steps.png"),
                    "a steady trend means the indicator tracks training; zig-zags between neighbouring "
                    "checkpoints (a high MTV) mean a single checkpoint's value is partly noise.",
                    "indicators over steps")
    if not label_panels:
        page.add(_note("No checkpoint of a run with steps has a fine-tuning label yet: run <code>ckptsel finetune "
                       "RUN@STEP ... --task configs/sft/NAME.yaml</code>."))
    else:
        page.figure(plot_over_steps(series, label_panels, "fine-tuning outcomes over steps, one line per run",
                                    page.out / "fig-labels-over-steps.png"),
                    "the outcome the predictor ranks by, per run; where it zig-zags, two neighbouring "
                    "checkpoints are close to a coin flip for any ranker.", "fine-tuning labels over steps")
    page.add(mtv_table(series, feature_panels + label_panels))


def write_report(ws: Workspace, *, model: str | None = None, target: str | None = None,
                 out: Path | None = None, log_to_mlflow: bool = True) -> Report:
    """Write the page and its plots; see the module docstring. Returns what was written."""
    chosen = _pick_model(ws, model, target)
    evaluations = _evaluations(ws, target)
    if chosen is None and not evaluations:
        what = f" for target {target!r}" if target else ""
        raise CkptselError(f"nothing to report in {ws.root}: no saved evaluation and no trained model{what}; run "
                           "`ckptsel evaluate --target T --split group:run` and `ckptsel train --target T` first")
    target = target or (chosen["target"] if chosen else None)
    targets = [target] + [t for t in evaluations if t != target] if target else list(evaluations)

    out = Path(out) if out else ws.root / "report"
    _prepare(out)
    predictor = importance = registry = None
    if chosen:
        from ckptsel.predictor import PairwisePredictor

        predictor = PairwisePredictor.load(chosen["dir"])
        importance = predictor.feature_importance()
        reg_file = chosen["dir"] / "registry.json"
        registry = json.loads(reg_file.read_text()) if reg_file.exists() else None
    series = _run_series(ws, targets)

    page = _Sections(out)
    for t in targets:
        _evaluation_section(page, t, evaluations.get(t), series is not None)
    _model_section(page, chosen, predictor, importance, registry, targets[0] if targets else None)
    _steps_section(page, series, importance)

    run_id = registry["run_id"] if (registry and log_to_mlflow) else None
    index = out / "index.html"
    index.write_text(_page(ws, targets, evaluations, chosen, page.body, run_id))
    if run_id:
        try:
            _log_artifacts(ws, run_id, out)
        except Exception as e:  # the page is written either way; say so on it and go on
            page.notes.append(f"not attached to MLflow run {run_id}: {e}")
            index.write_text(_page(ws, targets, evaluations, chosen, page.body, None,
                                   attach_error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
            run_id = None
    return Report(index, page.images, run_id, page.notes)


def build_report(ws: Workspace, *, model: str | None = None, target: str | None = None,
                 out: Path | None = None, log_to_mlflow: bool = True) -> Path:
    """Write ``index.html`` and its plots (default ``<workspace>/report/``); returns the page."""
    return write_report(ws, model=model, target=target, out=out, log_to_mlflow=log_to_mlflow).html


def _prepare(out: Path) -> None:
    """Make the folder; refuse one that holds anything but an earlier report (it would be logged
    to MLflow with the page), and remove the earlier report's plots."""
    if out.exists() and not out.is_dir():
        raise CkptselError(f"--out {out} is a file; pass a directory for the report")
    out.mkdir(parents=True, exist_ok=True)
    foreign = [p.name for p in out.iterdir() if not (p.name == "index.html" or
                                                     (p.name.startswith("fig-") and p.suffix == ".png"))]
    if foreign:
        raise CkptselError(f"--out {out} holds other files ({', '.join(sorted(foreign)[:3])}"
                           f"{' …' if len(foreign) > 3 else ''}); the whole folder is attached to MLflow, "
                           "so pass an empty or new directory")
    for p in out.glob("fig-*.png"):
        p.unlink()


def _log_artifacts(ws: Workspace, run_id: str, folder: Path) -> None:
    from mlflow import MlflowClient

    from ckptsel.tracking import configure

    configure(ws)
    MlflowClient().log_artifacts(run_id, str(folder), artifact_path="report")


def _page(ws: Workspace, targets: list[str], evaluations: dict, chosen: dict | None, body: list[str],
          run_id: str | None, attach_error: str | None = None) -> str:
    evaluated = "; ".join(f"<code>{_e(t)}</code> ({_e(', '.join(r['split'] for r in evaluations[t]))})"
                          for t in targets if t in evaluations) or "nothing yet"
    summary = []
    for t in targets:
        for r in evaluations.get(t, []):
            best, b = max(r["baselines"].items(), key=lambda kv: kv[1]["accuracy_mean"])
            ppl = [(f, v) for f, v in r["baselines"].items() if is_perplexity(f)]
            ppl_text = ""
            if ppl and not is_perplexity(best):
                pf, pv = max(ppl, key=lambda kv: kv[1]["accuracy_mean"])
                ppl_text = f", best plain perplexity <code>{_e(pf)}</code> {fmt_acc(pv)}"
            summary.append(f"<li><code>{_e(t)}</code>, {_e(r['split'])}: learned predictor "
                           f"<b>{fmt_acc(r['predictor'])}</b>, best single indicator <code>{_e(best)}</code> "
                           f"{fmt_acc(b)}{ppl_text}</li>")
    model_text = (f"model <code>{_e(chosen['name'])}</code>" if chosen else "no trained model")
    if run_id:
        mlflow_text = ("This folder is also logged as artifacts <code>report/</code> of MLflow run "
                       f"<code>{_e(run_id)}</code>.")
    elif attach_error:
        mlflow_text = f"Could not attach this folder to the MLflow run: {_e(attach_error)}."
    else:
        mlflow_text = "Not attached to MLflow."
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>ckptsel report: {_e(', '.join(targets) or 'workspace')}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>ckptsel report</h1>",
        f'<p class="meta">Workspace <code>{_e(ws.root)}</code> · generated {_e(generated)} · {model_text}</p>',
        "<p>Which pretraining checkpoint will fine-tune better? Evaluated: " + evaluated + ". Accuracy is the share "
        "of pairs of held-out checkpoints, with different outcomes, that a method puts in the right order "
        "(0.5 is a coin flip).</p>",
        f"<ul>{''.join(summary)}</ul>" if summary else "",
        f'<p class="meta">{mlflow_text}</p>',
        *body,
        "</body></html>",
    ])
