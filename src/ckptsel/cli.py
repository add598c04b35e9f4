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
the pipeline:
  ckptsel add runs/mix-a runs/mix-b                       # checkpoints, fingerprinted by their weights
  ckptsel indicators --spec configs/indicators/default.yaml runs/mix-a runs/mix-b
  ckptsel finetune mix-a@3000 mix-b@3000 --task configs/sft/tiny_mc.yaml    # the labels you pay for
  ckptsel evaluate --target sft/tiny_mc/acc --split group:run
  ckptsel train --target sft/tiny_mc/acc --name mc --alias champion
  ckptsel predict-pair mix-a@6000 mix-b@6000 --model mc
  ckptsel rank --all --model mc --top 10
  ckptsel serve --model mc@champion --port 5000
  ckptsel report                                          # report/index.html with plots, also in MLflow

or start from a table you already have:
  ckptsel import-table zoo.csv --id-column model_id --labels ft_mnli,ft_squad

State lives in the workspace (--workspace, $CKPTSEL_HOME, or the current directory):
ckptsel.db (the store), mlflow.db + mlartifacts/ (MLflow), models/<name>/ (exported predictors).
"""


def _workspace(args):
    from ckptsel.workspace import Workspace

    return Workspace.resolve(args.workspace)


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _emit(args, data, text: str) -> None:
    """JSON on stdout with --json, else the human-readable text."""
    if args.json:
        _print_json(data)
    else:
        print(text)


def _csv_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


# -- commands ---------------------------------------------------------------------------------
def cmd_import_table(args) -> int:
    ws = _workspace(args).ensure()
    summary = _import_table(ws, args, args.file)
    _emit(args, summary.__dict__, summary.describe())
    return 0


def _import_table(ws, args, path):
    """``import-table`` (and ``evaluate --table``): the table, then the label directions it was given."""
    from ckptsel.store import Store
    from ckptsel.tables import import_table

    directions = _directions(args)  # bad flags fail before anything is written
    with Store(ws.db_path) as store:
        summary = import_table(store, path, id_column=args.id_column, labels=_csv_list(args.labels),
                               run_column=args.run_column, step_column=args.step_column,
                               ignore=_csv_list(args.ignore_columns))
        with store.transaction():
            for label, higher in directions.items():
                store.set_direction(label, higher)
    return summary


def _directions(args) -> dict[str, bool]:
    """``--higher-is-better`` / ``--lower-is-better`` label lists as {label: higher is better}."""
    labels = set(_csv_list(args.labels))
    higher, lower = _csv_list(args.higher_is_better), _csv_list(args.lower_is_better)
    for name in higher + lower:
        if name not in labels:
            raise CkptselError(f"--higher-is-better/--lower-is-better name {name!r}, which is not in --labels "
                               f"({', '.join(sorted(labels))}); name label columns only")
    both = sorted(set(higher) & set(lower))
    if both:
        raise CkptselError(f"label {both[0]!r} is in both --higher-is-better and --lower-is-better; choose one")
    return {**{n: True for n in higher}, **{n: False for n in lower}}


def cmd_add(args) -> int:
    from ckptsel.checkpoints import add_checkpoints
    from ckptsel.store import Store

    ws = _workspace(args).ensure()
    errors: list[tuple[str, str]] = []
    with Store(ws.db_path) as store:
        added = add_checkpoints(store, args.paths, run=args.run, allow_pickle=args.allow_pickle, errors=errors)
    if args.json:
        _print_json({"added": [c.__dict__ for c in added],
                     "errors": [{"path": p, "error": e} for p, e in errors]})
    else:
        if added:
            print(f"{'id':<40} {'run':<24} {'step':>8}  fingerprint")
        for c in added:
            print(f"{c.id:<40} {c.run or '-':<24} {'-' if c.step is None else c.step:>8}  {c.fingerprint}")
        print(f"added {len(added)} checkpoint{'s' * (len(added) != 1)} to {ws.db_path}"
              + (f"; {len(errors)} failed" if errors else ""))
        no_tok = [c.id for c in added if not c.metadata.get("tokenizer")]
        if no_tok:
            print(f"note: no tokenizer in {', '.join(no_tok)}; indicators will refuse "
                  f"{'them' if len(no_tok) > 1 else 'it'} until one is saved there", file=sys.stderr)
    for _, e in errors:
        print(f"ckptsel: error: {e}", file=sys.stderr)
    return 1 if errors else 0


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
        values = store.feature_values(ckpt.fingerprint)
        if args.spec:
            wanted = set(store.spec_ids(args.spec))
            if not wanted:
                raise CkptselError(f"--spec {args.spec!r} matches no spec in {ws.db_path}; give a spec hash "
                                   "(or its first characters) or a spec name as `ckptsel features show CKPT` lists them")
            values = [v for v in values if v["spec"] in wanted]
        specs = {v["spec"]: store.spec_info(v["spec"]) for v in values}
    for v in values:
        info = specs[v["spec"]]
        v["spec_name"], v["dtype"] = info.get("name"), info.get("dtype")
    several = sorted({v["name"] for v in values if sum(w["name"] == v["name"] for w in values) > 1})
    lines = [f"{ckpt.id} (fingerprint {ckpt.fingerprint})", f"  {'feature':<44} {'value':>14}  spec"]
    lines += [f"  {v['name']:<44} {_value_text(v['value']):>14}  {v['spec']} "
              f"({', '.join(str(x) for x in (v['spec_name'], v['dtype']) if x) or 'unknown'})" for v in values]
    if several:
        lines.append(f"note: {len(several)} feature(s) have values under several specs ({', '.join(several[:3])}"
                     f"{', ...' if len(several) > 3 else ''}); choose one with --spec")
    _emit(args, {"id": ckpt.id, "fingerprint": ckpt.fingerprint, "path": ckpt.path, "features": values},
          "\n".join(lines))
    return 0


def _value_text(v) -> str:
    return "missing" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)


def cmd_evaluate(args) -> int:
    from ckptsel.evaluation import Split, evaluate, format_result, plain_perplexity_rules
    from ckptsel.store import Store
    from ckptsel.training import group_values, labelled_table

    ws = _workspace(args).ensure()
    split = Split.parse(args.split)
    if args.table:
        if not args.id_column or not args.labels:
            raise CkptselError("--table needs --id-column COL and --labels L1,L2 to import it first")
        summary = _import_table(ws, args, args.table)
        print(summary.describe(), file=sys.stderr)
    with Store(ws.db_path, create=False) as store:
        table = labelled_table(store, args.target)
    groups = group_values(table, split.column) if split.kind == "group" else None
    result = evaluate(table.frame, table.y, target=args.target, split=split, repeats=args.repeats,
                      seed=args.seed, groups=groups, fixed_rules=plain_perplexity_rules(table.frame.numeric_names),
                      progress=not args.json and sys.stderr.isatty())
    if not args.no_mlflow:
        from ckptsel.tracking import log_evaluation

        result["mlflow_run_id"] = log_evaluation(ws, result, {"target": args.target, "split": str(split),
                                                              "repeats": args.repeats, "seed": args.seed})
    ws.save_evaluation(result)
    _emit(args, result, format_result(result))
    for line in table.notes + result["warnings"]:
        print(f"ckptsel: warning: {line}", file=sys.stderr)
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
    print(f"exported version {result['version']} to {result['export_dir']}"
          + (f"; {result['name']}@{result['alias']} now means it" if result["alias"] else ""))
    reg = result.get("registry")
    if reg:
        print(f"registered {reg['model_uri']}" + (f" (alias {reg['alias']})" if reg["alias"] else "")
              + f", run {reg['run_id']} in {reg['tracking_uri']}")
        print(f"serve it: ckptsel serve --model {result['name']}/{result['version']}")
    for line in result["notes"]:
        print(f"ckptsel: note: {line}", file=sys.stderr)
    return 0


def cmd_predict_pair(args) -> int:
    from ckptsel.ranking import format_pair, predict_pair

    result = predict_pair(_workspace(args), args.a, args.b, model=args.model)
    _emit(args, result, format_pair(result))
    return 0


def cmd_rank(args) -> int:
    from ckptsel.ranking import format_rank, rank

    if not args.checkpoints and not args.all:
        raise CkptselError("name the candidates (ids, paths or run@step) or pass --all")
    result = rank(_workspace(args), None if args.all else args.checkpoints, model=args.model, top=args.top,
                  method=args.method, strict=args.strict)
    if result["skipped"] and not args.json:
        print(f"ckptsel: note: {len(result['skipped'])} candidate(s) not ranked: they lack features of the model "
              "(listed below the ranking" + (")" if not args.csv else "; run without --csv to see them)"),
              file=sys.stderr)
    if args.json:
        _print_json(result)
    elif args.csv:
        import csv

        keys = list(dict.fromkeys(k for c in result["candidates"] for k in c))
        writer = csv.DictWriter(sys.stdout, fieldnames=keys)
        writer.writeheader()
        writer.writerows(result["candidates"])
    else:
        print(format_rank(result))
    return 0


def cmd_serve(args) -> int:
    from ckptsel.serving import serve

    if args.model and args.name and args.model != args.name:
        raise CkptselError(f"--model {args.model!r} and --name {args.name!r} disagree; --model is enough")
    serve(_workspace(args), args.model or args.name, host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_import_lm_eval(args) -> int:
    from ckptsel.lmeval_import import import_lm_eval
    from ckptsel.store import Store

    ws = _workspace(args).ensure()
    with Store(ws.db_path) as store:
        summary = import_lm_eval(store, args.paths, run=args.run)
    _emit(args, summary.__dict__, summary.describe())
    return 0


def cmd_stability(args) -> int:
    from ckptsel.stability import DEFAULT_PLOT_WINDOW, format_stability, plot_stability, run_stability
    from ckptsel.store import Store

    ws = _workspace(args)
    with Store(ws.db_path, create=False) as store:
        features = [f for text in args.feature or [] for f in _csv_list(text)]
        result = run_stability(store, args.run, features or None, window=args.window)
        if args.plot:
            names = list(result["features"])
            path, n = plot_stability(store, args.run, names, args.plot, window=args.window or DEFAULT_PLOT_WINDOW)
            note = "; choose them with --feature" if n < len(names) else ""
            print(f"wrote {path} ({n} of {len(names)} features{note})", file=sys.stderr)
    _emit(args, result, format_stability(result))
    return 0


def _job_checkpoints(store, args, *, allow_pickle: bool = False):
    """The CKPT arguments of a per-checkpoint stage: directories are added to the store, ids and
    run@step looked up, duplicates dropped; returns ``(usable, [(id, error)])`` so that a deleted
    or damaged checkpoint costs only its own work."""
    from pathlib import Path

    from ckptsel.checkpoints import add_checkpoints, usable_checkpoints

    ckpts, seen = [], set()
    for ref in args.checkpoints:
        if Path(ref).expanduser().is_dir():
            found = add_checkpoints(store, [ref], run=args.run, allow_pickle=allow_pickle)
        else:
            found = [store.get_checkpoint(ref)]
        for c in found:
            if c.id not in seen:
                seen.add(c.id)
                ckpts.append(c)
    return usable_checkpoints(ckpts, allow_pickle=allow_pickle)


def _emit_with_errors(args, data: dict, text: str, bad) -> int:
    """Print the result, then one ``ckptsel: error:`` line per bad checkpoint; exit 1 if any."""
    _emit(args, {**data, "errors": [{"id": i, "error": e} for i, e in bad]}, text)
    for _, e in bad:
        print(f"ckptsel: error: {e}", file=sys.stderr)
    return 1 if bad else 0


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv_list(text)]
    except ValueError as e:
        raise CkptselError(f"--seeds {text!r} must be comma-separated integers, e.g. 0,1,2") from e


def cmd_indicators(args) -> int:
    from ckptsel.executor import make_executor
    from ckptsel.indicators import run_indicators
    from ckptsel.indicators.spec import load_spec
    from ckptsel.store import Store

    spec = load_spec(args.spec)
    executor = make_executor(args.executor, args.ray_address)  # bad flags fail before any work
    ws = _workspace(args).ensure()
    with Store(ws.db_path) as store:
        ckpts, bad = _job_checkpoints(store, args, allow_pickle=args.allow_pickle)
        with executor:
            report = run_indicators(store, ckpts, spec, device=args.device, dtype=args.dtype,
                                    batch_size=args.batch_size, average_window=args.average_window,
                                    ensemble_window=args.ensemble_window, allow_pickle=args.allow_pickle,
                                    threads=args.threads, progress=False if args.no_progress else None,
                                    executor=executor)
    return _emit_with_errors(args, {"spec": spec.name, "checkpoints": [c.id for c in ckpts], **report.__dict__},
                             report.describe(), bad)


def cmd_average(args) -> int:
    import time

    from ckptsel.averaging import average_checkpoints

    started = time.perf_counter()
    out = average_checkpoints(args.checkpoints, args.output, args.weights, max_shard_size=args.max_shard_size,
                              overwrite=args.overwrite, progress=sys.stderr.isatty())
    record = json.loads((out / "ckptsel_average.json").read_text())
    record = {"output": str(out), **record, "seconds": round(time.perf_counter() - started, 3)}
    if args.json:
        _print_json(record)
    else:
        weights = ", ".join(f"{w:.4g}" for w in record["weights"])
        print(f"wrote {out}: the mean of {len(record['inputs'])} checkpoints (weights {weights}) "
              f"in {record['seconds']:.1f}s; config and tokenizer from {record['config_from']}")
    return 0


def cmd_finetune(args) -> int:
    from ckptsel.executor import make_executor
    from ckptsel.finetune import load_task, run_finetune
    from ckptsel.store import Store

    task = load_task(args.task)
    executor = make_executor(args.executor, args.ray_address)  # bad flags fail before any work
    seeds = _seeds(args.seeds)
    ws = _workspace(args).ensure()
    with Store(ws.db_path) as store:
        ckpts, bad = _job_checkpoints(store, args, allow_pickle=args.allow_pickle)
        with executor:
            report = run_finetune(store, ckpts, task, workspace=ws.root, seeds=seeds, device=args.device,
                                  progress=False if args.no_progress else None, executor=executor,
                                  allow_pickle=args.allow_pickle)
    return _emit_with_errors(args, report.__dict__, report.describe(), bad)


def cmd_report(args) -> int:
    from pathlib import Path

    from ckptsel.report import write_report

    report = write_report(_workspace(args), model=args.model, target=args.target,
                          out=Path(args.out) if args.out else None, log_to_mlflow=not args.no_mlflow)
    data = {"html": str(report.html), "images": [str(p) for p in report.images],
            "mlflow_run_id": report.mlflow_run_id, "notes": report.notes}
    if not args.json:
        for note in report.notes:
            print(f"note: {note}", file=sys.stderr)
    _emit(args, data, str(report.html))
    return 0


def cmd_demo(args) -> int:
    from ckptsel.demo import run_demo

    import os

    return run_demo(args.workspace or os.environ.get("CKPTSEL_HOME") or "ckptsel-demo", preset=args.preset, seeds=_seeds(args.seeds),
                    tasks=_csv_list(args.tasks), repeats=args.repeats, report=not args.no_report)


def cmd_zoo_build(args) -> int:
    from ckptsel.executor import make_executor
    from ckptsel.zoo import build_zoo, get_preset

    preset = get_preset(args.preset)
    with make_executor(args.executor, args.ray_address) as executor:
        result = build_zoo(preset, _workspace(args).root, progress=False if args.no_progress or args.json else None,
                           executor=executor, threads=args.threads)
    _emit(args, result.__dict__, result.describe())
    return 0


def cmd_zoo_list(args) -> int:
    from ckptsel.zoo.presets import BUILTIN

    presets = [BUILTIN[name]() for name in BUILTIN]
    data = [{"name": p.name, "variants": len(p.variants), "checkpoints": p.n_checkpoints,
             "description": p.description} for p in presets]
    _emit(args, {"presets": data}, "\n".join(f"{d['name']:<12} {d['variants']:>3} variants {d['checkpoints']:>4} "
                                             f"checkpoints  {d['description']}" for d in data))
    return 0


# -- parser -----------------------------------------------------------------------------------
def add_executor_args(p: argparse.ArgumentParser, job: str) -> None:
    """``--executor local|ray`` and ``--ray-address``, for stages that run one job per ``job``."""
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help=f"local: run here, one {job} after another (default). ray: one Ray task per {job}, "
                        "with the num_cpus/num_gpus of the spec (default 1 CPU, 0 GPU), a fresh worker "
                        "process per job, retried if its worker dies; results are stored here only")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to use with --executor ray: auto (the `ray start` cluster on this node), "
                        "ray://HEAD:10001 (Ray Client), or HOST:6379; default: $RAY_ADDRESS, else a local "
                        "Ray started for this command")


def _add_table_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--id-column", required=required, help="column that names each checkpoint")
    p.add_argument("--labels", required=required,
                   help="comma-separated fine-tuning outcome columns (stored as labels, never features)")
    p.add_argument("--run-column", help="column naming each checkpoint's pretraining run")
    p.add_argument("--step-column", help="column with each checkpoint's training step (integer; also a feature)")
    p.add_argument("--ignore-columns", help="comma-separated columns to skip (e.g. a row index)")
    p.add_argument("--higher-is-better", metavar="L1,L2", help="labels where a higher value is the better outcome")
    p.add_argument("--lower-is-better", metavar="L1,L2",
                   help="labels where a lower value is the better outcome. Without either flag the direction is "
                        "guessed from the name: lower is better when its last part ends with loss, perplexity, ppl "
                        "or error (sft/x/eval_loss), else higher is better; a direction set here is kept in the store")


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

    p = add("zoo", None, "pretrain the micro zoo: tiny Llama models trained here on CPU (checkpoints to study)")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)
    q = zsub.add_parser(
        "build", help="pretrain a preset's variants and register their checkpoints in the store",
        description="Pretrain every variant of a zoo preset (objective, learning rate, domain mix, seed) from "
                    "scratch on this machine's CPU and register each saved checkpoint as <variant>@<step>, with "
                    "the features zoo/objective, zoo/lr, zoo/mix/<domain> and zoo/tokens.",
        epilog="Files: <workspace>/zoo/<preset>/tokenizer/ (one byte-level BPE tokenizer for the whole zoo) and "
               "<workspace>/zoo/<preset>/<variant>/checkpoint-<N>/ (safetensors). A finished variant has "
               "complete.json and is skipped on a rerun (seconds); an interrupted one is trained again. "
               "Same seed and machine: the same bytes. Custom presets are YAML files; see "
               "`python -c 'import ckptsel.zoo.presets as p; print(p.__doc__)'`. Next: "
               "`ckptsel indicators clm@300 ... --spec configs/indicators/zoo.yaml`, then `ckptsel finetune`.")
    q.add_argument("--preset", required=True, metavar="NAME|FILE.yaml",
                   help="micro (4 variants x 3 checkpoints, about a minute), paper-mini (28 x 5, about 13 "
                        "minutes of one core) or a preset YAML file; `ckptsel zoo list` shows them")
    q.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch CPU threads per variant (default 1: fastest for models this small on a busy "
                        "machine; the checkpoint bytes can depend on it)")
    add_executor_args(q, "variant")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.add_argument("--workspace", default=argparse.SUPPRESS, help="workspace directory")
    q.add_argument("--json", action="store_true",
                   help='print {"preset", "root", "variants", "trained", "skipped", "checkpoint_ids", "seconds"}')
    q.set_defaults(func=cmd_zoo_build)
    q = zsub.add_parser("list", help="the built-in presets with their variant and checkpoint counts")
    q.add_argument("--workspace", default=argparse.SUPPRESS, help="workspace directory")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_zoo_list)

    p = add("add", cmd_add, "register checkpoint directories or run directories (fingerprinted by their weights)",
            epilog="A checkpoint directory has config.json and model.safetensors (or sharded safetensors); a run "
                   "directory has checkpoint-<N>, step<N>, step-<N> or global_step<N> subdirectories. "
                   "Ids are RUN@STEP. Exit status 1 when some checkpoint could not be added.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint or run directory")
    p.add_argument("--run", help="run name (default: the run directory's name)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickled .bin weights (unpickling can run code: only for files you trust)")
    p.add_argument("--json", action="store_true", help='print {"added": [...], "errors": [{"path", "error"}]}')

    p = add("import-table", cmd_import_table, "import a CSV or Parquet table of checkpoints, features and outcomes")
    p.add_argument("file", help="CSV or Parquet file, one row per checkpoint")
    _add_table_args(p, required=True)
    p.add_argument("--json", action="store_true", help="print the import summary as JSON")

    p = add("import-lm-eval", cmd_import_lm_eval,
            "import lm-evaluation-harness result files (0.3 or 0.4 layout) as lmeval/<task>/<metric> features",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="Each file is one checkpoint (run, step).\n"
                   "  step: revision=stepN in config.model_args, else the file name ..._stepN.json\n"
                   "  run:  --run, else the file's folder, or the one above when the folder is a setting\n"
                   "        (zero-shot, five-shot, 5shot, ...): pythia-160m/zero-shot/160m_step1000.json and\n"
                   "        pythia-160m/five-shot/160m-5shot_step1000.json -> one checkpoint pythia-160m@1000\n"
                   "Features: lmeval/<task>/<metric> zero-shot, lmeval/<task>@<k>shot/<metric> k-shot.\n"
                   "A checkpoint with that run and step keeps its id and fingerprint; otherwise <run>@<step>\n"
                   "is created. The ',none' filter suffix is dropped (acc,none -> acc), other filters kept;\n"
                   "*_stderr metrics are not stored. All files are validated, then written in one transaction.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="result files, or directories searched for *.json")
    p.add_argument("--run", help="run name for every file (default: each file's folder, above a zero-shot/five-shot "
                                 "folder)")
    p.add_argument("--json", action="store_true", help="print the import summary as JSON")

    p = add("indicators", cmd_indicators,
            "compute perplexity, span-corruption perplexity and k-shot indicators of checkpoints into the store",
            epilog="Features: ppl/<corpus>/{bits_per_byte,byte_perplexity,word_perplexity,token_perplexity}, "
                   "ppl_sc/<name>/{token_perplexity,bits_per_byte}, kshot/<task>/{acc,acc_norm,exact_match}; "
                   "window features avg@K/<feature> and ens@K/<feature>. Stored per (checkpoint fingerprint, "
                   "feature, spec hash): a rerun computes only what is missing. "
                   "See them with `ckptsel features show CKPT --json`. A checkpoint whose directory is gone or "
                   "corrupt is reported (exit status 1) and the others are still computed.")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT",
                   help="checkpoint or run directory (added to the store), or id / run@step of a stored checkpoint")
    p.add_argument("--spec", required=True, help="indicator spec, e.g. configs/indicators/default.yaml")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", help="float32, bfloat16, float16 or auto (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--batch-size", type=int, help="sequences per forward pass (default: the spec's)")
    p.add_argument("--average-window", type=int, metavar="K",
                   help="also score the parameter average of each checkpoint and its K-1 predecessors (avg@K/...)")
    p.add_argument("--ensemble-window", type=int, metavar="K",
                   help="also score the ensemble (mean probabilities) of each checkpoint and its K-1 "
                        "predecessors (ens@K/...)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads while scoring (default: 1 for models under 20M parameters, else torch's)")
    p.add_argument("--run", help="run name for checkpoint directories added here")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickled .bin weights (only files you trust)")
    add_executor_args(p, "checkpoint or window")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print what was computed as JSON")

    p = add("average", cmd_average,
            "write the (weighted) parameter mean of checkpoints as a new checkpoint (Nishida et al., arXiv 2510.04848)",
            epilog="Every tensor is sum_i w_i theta_i / sum_i w_i, accumulated in float32 with mergekit linear's "
                   "arithmetic and cast back to the checkpoints' dtype, streamed in blocks, so memory stays "
                   "a few blocks of tensors whatever the model size. Safetensors inputs only; they must share "
                   "architecture and tensor names, shapes and dtypes. OUT gets the config and tokenizer of "
                   "the LAST checkpoint.")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint directories (config.json + safetensors)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="directory to write (must not exist)")
    p.add_argument("--weights", metavar="W1,W2,...",
                   help="one weight >= 0 per checkpoint, normalised to sum 1 (default: uniform)")
    p.add_argument("--max-shard-size", default="5GB",
                   help="split the output into shards of at most this size, with an index (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (only once the new one is written)")
    p.add_argument("--json", action="store_true", help="print the output path, inputs, weights and seconds as JSON")

    p = add("finetune", cmd_finetune,
            "fine-tune checkpoints on an SFT task (LoRA by default) and store the outcome as a label",
            epilog="The label is sft/<task>/<metric>: the mean over seeds (std and n stored too), keyed by the "
                   "checkpoint fingerprint and the hash of the task spec, its data files and the seeds. "
                   "Adapters go to <workspace>/adapters/. Checkpoints already labelled are skipped.")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint directories, run directories or ids")
    p.add_argument("--task", required=True, help="SFT task YAML (configs/sft/NAME.yaml)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0); the label is their mean")
    p.add_argument("--run", help="run name for checkpoints added from directories")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickled .bin weights (unpickling can run code: only for files you trust)")
    add_executor_args(p, "(checkpoint, seed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add("stability", cmd_stability,
            "mean total variation (MTV) and instability score (IS) of features along a run "
            "(Nishida et al., arXiv 2510.04848)",
            epilog="MTV = 1/(m-1) sum_t |L(step_t+1) - L(step_t)| over the run's checkpoints ordered by step; "
                   "IS = mean over adjacent pairs of the fraction of examples whose prediction changes "
                   "(null without stored per-example predictions). Checkpoints without a value are skipped.")
    p.add_argument("--run", required=True, help="the run whose checkpoints to order by step")
    p.add_argument("--feature", action="append", metavar="F1,F2,...",
                   help="comma-separated numeric features (default: all but stability/* and step)")
    p.add_argument("--window", type=int, metavar="K",
                   help="also store MTV/IS over the last K checkpoints up to each one as features "
                        "stability/<feature>/mtv@K and .../is@K (K>=2; shorter windows at the start)")
    p.add_argument("--json", action="store_true",
                   help='print {"run", "n_checkpoints", "features": {NAME: {"mtv", "is"[, "window"]}}}')
    p.add_argument("--plot", metavar="FILE.png",
                   help="write a PNG: each feature's curve over steps with its trailing mean over K "
                        "(--window, default 5); at most 12 panels")

    p = add("features", None, "show stored features")
    fsub = p.add_subparsers(dest="features_command", metavar="ACTION", required=True)
    q = fsub.add_parser("show", help="a checkpoint's stored features, each with the spec that computed it",
                        description="Every stored value of a checkpoint, one per (feature, spec): the spec hash "
                                    "(the indicator spec, dtype, table or task that made it) is shown beside each "
                                    "value. A model reads exactly the specs it was trained on; values of other "
                                    "specs are never mixed in.")
    q.add_argument("checkpoint", help="checkpoint id, path or run@step")
    q.add_argument("--spec", metavar="HASH|NAME", help="only values of this spec (a hash prefix or a spec name)")
    q.add_argument("--workspace", default=argparse.SUPPRESS, help="workspace directory")
    q.add_argument("--json", action="store_true",
                   help='print {"id", "fingerprint", "path", "features": [{"name", "value", "spec", "spec_name", '
                        '"dtype", ...}]}')
    q.set_defaults(func=cmd_features_show)

    p = add("list", cmd_list, "list the checkpoints and labelled targets in the store")
    p.add_argument("--targets", action="store_true", help="only the targets and their label counts")
    p.add_argument("--json", action="store_true")

    p = add("evaluate", cmd_evaluate,
            "pairwise accuracy of the predictor and single-feature baselines on held-out checkpoints",
            epilog="Each repeat trains on pairs among the training checkpoints only and scores the unordered "
                   "pairs among the held-out ones whose targets differ (Zeng et al., arXiv 2504.12491).")
    p.add_argument("--target", required=True, help="label to predict (a fine-tuning outcome)")
    p.add_argument("--split", default="random:0.6",
                   help="random:F (train on a fraction F of checkpoints), group:COLUMN (leave one group out; "
                        "COLUMN is a categorical feature or 'run') or group:COLUMN:F (train on a fraction F of "
                        "the groups, test on pairs across the others); default random:0.6")
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
    p.add_argument("--model", metavar="NAME[@ALIAS|/VERSION]",
                   help="the predictor: NAME (its champion alias, else its newest version), NAME@ALIAS or "
                        "NAME/VERSION (default: the only one)")
    p.add_argument("--top", type=int, help="print only the best K")
    p.add_argument("--method", choices=["borda", "bradley-terry"], default="borda",
                   help="borda: expected wins (default); bradley-terry: strengths fitted to the pair probabilities")
    p.add_argument("--strict", action="store_true",
                   help="refuse the whole ranking when a candidate lacks a feature of the model (default: rank the "
                        "others and list it with the command that computes what it lacks)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", action="store_true")

    p = add("serve", cmd_serve, "serve the registered predictor over REST (MLflow's scoring server)",
            epilog="POST /invocations with {\"dataframe_records\": [{\"a.<feature>\": ..., \"b.<feature>\": ...}]} "
                   "(or dataframe_split, inputs); answers {\"predictions\": [{\"prob_a_better\": p}]}. GET /ping "
                   "for health. Bad requests get 4xx with a message: 400 (schema, types, infinities, bad or too "
                   "deeply nested JSON), 413 (body over 64 MiB), 415 (no or unsupported Content-Type). The model "
                   "is loaded from the registry of $MLFLOW_TRACKING_URI (a team server) or the workspace's mlflow.db.")
    p.add_argument("--model", metavar="NAME[@ALIAS|/VERSION]",
                   help="the predictor, as for predict-pair and rank: NAME (its champion alias, else its newest "
                        "version), NAME@ALIAS or NAME/VERSION; default: the only model")
    p.add_argument("--name", help=argparse.SUPPRESS)  # the older spelling of --model
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes, each with its own model copy")

    p = add("report", cmd_report, "write an HTML page with plots of the evaluations, the model and the runs",
            epilog="The page (index.html, PNG plots, no script, no network) shows the saved evaluations "
                   "(`ckptsel evaluate`), the model's feature importance (`ckptsel train`) and every indicator "
                   "and label over steps per run with its MTV. The folder is also logged as artifacts report/ "
                   "of the model's MLflow training run. Open it with a browser: "
                   "xdg-open <workspace>/report/index.html")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <workspace>/report)")
    p.add_argument("--model", metavar="NAME[@ALIAS|/VERSION]",
                   help="the predictor, as for predict-pair (default: the newest trained, for --target when given)")
    p.add_argument("--target", help="report only this target (default: every evaluated target)")
    p.add_argument("--no-mlflow", action="store_true", help="do not attach the folder to the MLflow run")
    p.add_argument("--json", action="store_true", help='print {"html", "images", "mlflow_run_id", "notes"}')

    p = add("demo", cmd_demo, "run the whole pipeline on the micro zoo in ./ckptsel-demo: build tiny models, "
            "compute indicators, fine-tune them, evaluate, train and register the predictor, predict-pair, rank, "
            "report (about 5 minutes on 2 CPU cores; a rerun reuses what is done)")
    p.add_argument("--preset", default="micro", help="zoo preset: micro (default) or paper-mini (about an hour)")
    p.add_argument("--tasks", default="zoo_domain,zoo_ending,zoo_cloze",
                   help="SFT tasks (configs/sft/NAME.yaml), comma-separated; the first is the model's target")
    p.add_argument("--seeds", default="0", help="fine-tuning seeds per checkpoint, e.g. 0,1,2 (default 0)")
    p.add_argument("--repeats", type=int, default=20, help="random 60/40 splits to average over (default 20)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    return parser


def _add_predict_pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="CKPT_A", help="checkpoint id, path or run@step")
    p.add_argument("b", metavar="CKPT_B", help="checkpoint id, path or run@step")
    p.add_argument("--model", metavar="NAME[@ALIAS|/VERSION]",
                   help="the predictor: NAME (its champion alias, else its newest version), NAME@ALIAS or "
                        "NAME/VERSION (default: the only one)")
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
        return _error(parser, args, str(e))
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `ckptsel rank --all | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a full disk, a read-only or unwritable workspace: one line, no traceback
        import os
        from pathlib import Path

        from ckptsel.store import storage_error

        err = storage_error(e, Path(args.workspace or os.environ.get("CKPTSEL_HOME") or ".").expanduser().resolve())
        if err is None:
            raise
        return _error(parser, args, str(err))


def _error(parser: argparse.ArgumentParser, args, message: str, code: int = 2) -> int:
    """One line on stderr; with --json also ``{"error": ...}`` on stdout, for scripts. Exit ``code``."""
    if getattr(args, "json", False):
        _print_json({"error": message})
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return code


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
