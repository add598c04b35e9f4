"""The ``ckptsel`` command line: a thin layer over the library functions.

Heavy libraries are imported inside each command, so ``predict-pair`` and ``rank`` pay for
lightgbm and numpy only.
"""

from __future__ import annotations

import argparse
import json
import sys

from ckptsel.errors import CkptselError

EPILOG = """\
typical session:
  ckptsel import-table zoo.csv --id-column model_id --labels ft_mnli,ft_squad
  ckptsel evaluate --target ft_mnli --split random:0.6 --repeats 20
  ckptsel train --target ft_mnli --name mnli --alias champion
  ckptsel predict-pair run-a@3000 run-b@3000 --model mnli
  ckptsel rank --all --model mnli --top 10
  ckptsel serve --name mnli@champion --port 5000

State lives in the workspace (--workspace, $CKPTSEL_HOME, or the current directory):
ckptsel.db (the store), mlflow.db + mlartifacts/ (MLflow), models/<name>/ (exported predictors).
"""


def _workspace(args):
    from ckptsel.workspace import Workspace

    return Workspace.resolve(args.workspace)


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _csv_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


# -- commands ---------------------------------------------------------------------------------
def cmd_import_table(args) -> int:
    from ckptsel.store import Store
    from ckptsel.tables import import_table

    ws = _workspace(args).ensure()
    with Store(ws.db_path) as store:
        summary = import_table(store, args.file, id_column=args.id_column, labels=_csv_list(args.labels),
                               run_column=args.run_column, step_column=args.step_column,
                               ignore=_csv_list(args.ignore_columns))
    if args.json:
        _print_json(summary.__dict__)
    else:
        print(summary.describe())
    return 0


def cmd_list(args) -> int:
    from ckptsel.store import Store

    ws = _workspace(args)
    with Store(ws.db_path, create=False) as store:
        ckpts = store.checkpoints()
        targets = {t: len(store.labels(t)) for t in store.targets()}
    if args.json:
        _print_json({"checkpoints": [c.__dict__ for c in ckpts], "targets": targets})
        return 0
    if not args.targets:
        print(f"{'id':<40} {'run':<24} {'step':>8}  fingerprint")
        for c in ckpts:
            print(f"{c.id:<40} {c.run or '-':<24} {'-' if c.step is None else c.step:>8}  {c.fingerprint}")
        print()
    print(f"{len(ckpts)} checkpoints; labelled targets: "
          + (", ".join(f"{t} ({n})" for t, n in targets.items()) or "none"))
    return 0


def cmd_features_show(args) -> int:
    from ckptsel.store import Store

    ws = _workspace(args)
    with Store(ws.db_path, create=False) as store:
        ckpt = store.get_checkpoint(args.checkpoint)
        values = store.feature_frame([ckpt.id]).as_dict(0)
    if args.json:
        _print_json(values)
    else:
        print(f"{ckpt.id} (fingerprint {ckpt.fingerprint})")
        for k, v in values.items():
            print(f"  {k:<40} {v}")
    return 0


def cmd_evaluate(args) -> int:
    from ckptsel.evaluation import Split, evaluate, format_result
    from ckptsel.store import Store
    from ckptsel.training import group_values, labelled_table

    ws = _workspace(args).ensure()
    split = Split.parse(args.split)
    if args.table:
        if not args.id_column or not args.labels:
            raise CkptselError("--table needs --id-column COL and --labels L1,L2 to import it first")
        from ckptsel.tables import import_table

        with Store(ws.db_path) as store:
            summary = import_table(store, args.table, id_column=args.id_column, labels=_csv_list(args.labels),
                                   run_column=args.run_column, step_column=args.step_column,
                                   ignore=_csv_list(args.ignore_columns))
        print(summary.describe(), file=sys.stderr)
    with Store(ws.db_path, create=False) as store:
        table = labelled_table(store, args.target)
    groups = group_values(table, split.column) if split.kind == "group" else None
    result = evaluate(table.frame, table.y, target=args.target, split=split, repeats=args.repeats,
                      seed=args.seed, groups=groups, progress=not args.json and sys.stderr.isatty())
    if not args.no_mlflow:
        from ckptsel.tracking import log_evaluation

        result["mlflow_run_id"] = log_evaluation(ws, result, {"target": args.target, "split": str(split),
                                                              "repeats": args.repeats, "seed": args.seed})
    if args.json:
        _print_json(result)
    else:
        print(format_result(result))
    return 0


def cmd_train(args) -> int:
    from ckptsel.training import train

    ws = _workspace(args).ensure()
    result = train(ws, args.target, name=args.name, alias=args.alias or None, seed=args.seed,
                   cv_repeats=args.cv_repeats)
    if args.json:
        _print_json(result)
        return 0
    print(f"trained {result['name']} on {result['n_checkpoints']} checkpoints "
          f"({result['n_pairs']} ordered pairs) for target {result['target']} in {result['fit_seconds']:.2f}s")
    if result["cv_accuracy_mean"] is not None:
        print(f"cross-validated pairwise accuracy (random:0.6, {args.cv_repeats} repeats): "
              f"{result['cv_accuracy_mean']:.3f}")
    print(f"exported to {result['export_dir']}")
    reg = result.get("registry")
    if reg:
        print(f"registered {reg['model_uri']}" + (f" (alias {reg['alias']})" if reg["alias"] else "")
              + f", run {reg['run_id']} in {reg['tracking_uri']}")
        print(f"serve it: ckptsel serve --name {result['name']}@{reg['alias'] or 'champion'}")
    return 0


def cmd_predict_pair(args) -> int:
    from ckptsel.ranking import format_pair, predict_pair

    result = predict_pair(_workspace(args), args.a, args.b, model=args.model)
    if args.json:
        _print_json(result)
    else:
        print(format_pair(result))
    return 0


def cmd_rank(args) -> int:
    from ckptsel.ranking import format_rank, rank

    if not args.checkpoints and not args.all:
        raise CkptselError("name the candidates (ids, paths or run@step) or pass --all")
    result = rank(_workspace(args), None if args.all else args.checkpoints, model=args.model, top=args.top,
                  method=args.method)
    if args.json:
        _print_json(result)
    elif args.csv:
        import csv

        keys = list(result["candidates"][0])
        writer = csv.DictWriter(sys.stdout, fieldnames=keys)
        writer.writeheader()
        writer.writerows(result["candidates"])
    else:
        print(format_rank(result))
    return 0


def cmd_serve(args) -> int:
    from ckptsel.serving import serve

    serve(_workspace(args), args.name, host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_demo(args) -> int:
    from ckptsel.demo import run_demo

    return run_demo(args.workspace or "ckptsel-demo")


# -- parser -----------------------------------------------------------------------------------
def _add_table_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--id-column", required=required, help="column that names each checkpoint")
    p.add_argument("--labels", required=required,
                   help="comma-separated fine-tuning outcome columns (stored as labels, never features)")
    p.add_argument("--run-column", help="column naming each checkpoint's pretraining run")
    p.add_argument("--step-column", help="column with each checkpoint's training step (integer; also a feature)")
    p.add_argument("--ignore-columns", help="comma-separated columns to skip (e.g. a row index)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckptsel", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Predict which of two LLM pretraining checkpoints will be better after fine-tuning.")
    parser.add_argument("--workspace", help="workspace directory (default: $CKPTSEL_HOME or the current directory)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, func, help_, **kw):
        p = sub.add_parser(name, help=help_, description=help_, **kw)
        p.add_argument("--workspace", default=argparse.SUPPRESS, help="workspace directory")
        p.set_defaults(func=func)
        return p

    p = add("import-table", cmd_import_table, "import a CSV or Parquet table of checkpoints, features and outcomes")
    p.add_argument("file", help="CSV or Parquet file, one row per checkpoint")
    _add_table_args(p, required=True)
    p.add_argument("--json", action="store_true", help="print the import summary as JSON")

    p = add("list", cmd_list, "list the checkpoints and labelled targets in the store")
    p.add_argument("--targets", action="store_true", help="only the targets and their label counts")
    p.add_argument("--json", action="store_true")

    p = add("features", None, "show stored features")
    fsub = p.add_subparsers(dest="features_command", metavar="ACTION", required=True)
    q = fsub.add_parser("show", help="a checkpoint's stored features (newest spec) as a flat object")
    q.add_argument("checkpoint", help="checkpoint id, path or run@step")
    q.add_argument("--workspace", default=argparse.SUPPRESS, help="workspace directory")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_features_show)

    p = add("evaluate", cmd_evaluate,
            "pairwise accuracy of the predictor and single-feature baselines on held-out checkpoints",
            epilog="Each repeat trains on pairs among the training checkpoints only and scores the unordered "
                   "pairs among the held-out ones whose targets differ (Zeng et al., arXiv 2504.12491).")
    p.add_argument("--target", required=True, help="label to predict (a fine-tuning outcome)")
    p.add_argument("--split", default="random:0.6",
                   help="random:F (train on a fraction F of checkpoints) or group:COLUMN (leave one group out; "
                        "COLUMN is a categorical feature or 'run'); default random:0.6")
    p.add_argument("--repeats", type=int, default=20, help="random splits to average over (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", help="import this table first (with --id-column and --labels)")
    _add_table_args(p, required=False)
    p.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = add("train", cmd_train, "fit on every labelled checkpoint, export to models/NAME, register in MLflow")
    p.add_argument("--target", required=True)
    p.add_argument("--name", help="model name (default: ckptsel-<target>)")
    p.add_argument("--alias", default="champion", help="registry alias to point at the new version ('' for none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cv-repeats", type=int, default=5, help="random:0.6 repeats for the logged CV metrics")
    p.add_argument("--json", action="store_true")

    p = add("predict-pair", cmd_predict_pair, "P(checkpoint A fine-tunes better than B), with the reasons")
    _add_predict_pair_args(p)

    p = add("rank", cmd_rank, "rank candidate checkpoints by expected wins over all pairs")
    p.add_argument("checkpoints", nargs="*", help="ids, paths or run@step (or --all)")
    p.add_argument("--all", action="store_true", help="rank every checkpoint in the store")
    p.add_argument("--model", help="exported predictor name (default: the only one)")
    p.add_argument("--top", type=int, help="print only the best K")
    p.add_argument("--method", choices=["borda", "bradley-terry"], default="borda",
                   help="borda: expected wins (default); bradley-terry: strengths fitted to the pair probabilities")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", action="store_true")

    p = add("serve", cmd_serve, "serve the registered predictor over REST with `mlflow models serve`")
    p.add_argument("--name", help="NAME@ALIAS, NAME/VERSION or NAME (alias champion); default: the only model")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=1)

    p = add("demo", cmd_demo, "run the whole pipeline on a small example table in ./ckptsel-demo")
    return parser


def _add_predict_pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="CKPT_A", help="checkpoint id, path or run@step")
    p.add_argument("b", metavar="CKPT_B", help="checkpoint id, path or run@step")
    p.add_argument("--model", help="exported predictor name (default: the only one)")
    p.add_argument("--json", action="store_true", help='print {"a", "b", "prob_a_better", "decision", "reasons"}')


def _run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not hasattr(args, "workspace"):
        args.workspace = None
    try:
        return args.func(args)
    except CkptselError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser(), argv)


def predict_pair_main(argv: list[str] | None = None) -> int:
    """The ``predict-pair`` console script: the same as ``ckptsel predict-pair``."""
    parser = argparse.ArgumentParser(prog="predict-pair",
                                     description="P(checkpoint A fine-tunes better than B), with the reasons.")
    _add_predict_pair_args(parser)
    parser.add_argument("--workspace", help="workspace directory (default: $CKPTSEL_HOME or the current directory)")
    parser.set_defaults(func=cmd_predict_pair)
    return _run(parser, argv)
