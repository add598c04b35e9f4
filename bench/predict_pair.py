"""Cold-start cost of the ``predict-pair`` console script, relative to ``import lightgbm``.

    .venv/bin/python bench/predict_pair.py [--runs 9] [--json]

Builds a 60-checkpoint workspace, then times fresh processes (warm OS file cache, one
discarded warm-up each), alternating and swapping the order every round:

    A: <venv>/bin/predict-pair ID1 ID2 --workspace WS
    B: <interpreter of that script> -c "import lightgbm"

and prints the medians of wall time (and of the children's user+sys CPU time, less sensitive
to a busy machine). Target: median A / median B <= 1.3. It also runs the same predict-pair
command once under ``python -X importtime`` and checks that torch, transformers, peft and
mlflow are not imported on that path (exit status 1 if they are).
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time

from _common import (base_parser, build_workspace, check_call, clean_env, emit, log, median, script,
                     script_interpreter, workdir)

TARGET_RATIO = 1.3
FORBIDDEN = ("torch", "transformers", "peft", "mlflow")
WATCH = ("pandas", "sklearn", "scipy", "matplotlib", "pyarrow", "sqlalchemy")


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and user+sys CPU seconds of one child process (which must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env())
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def imported_roots(python: str, argv: list[str]) -> dict[str, float]:
    """Top-level packages a process imports (``-X importtime``), with the cumulative seconds of
    the imports made at the top of the import tree (0 for packages only imported by others)."""
    proc = check_call([python, "-X", "importtime", *argv])
    roots: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( +)(\S+)", line)
        if not m:
            continue
        root = m.group(4).split(".")[0]
        if len(m.group(3)) == 1:  # one space: imported by the script itself, not by another module
            roots[root] = roots.get(root, 0.0) + int(m.group(2)) / 1e6
        else:
            roots.setdefault(root, 0.0)
    return roots


def import_report(python: str, cmd: list[str]) -> dict:
    """The predict-pair command's imports: forbidden ones, heavy ones, and what it imports beyond
    ``import lightgbm`` (which itself pulls in pandas, scipy, sklearn when they are installed)."""
    roots = imported_roots(python, cmd)
    lgb_roots = imported_roots(python, ["-c", "import lightgbm"])
    top = sorted(((r, s) for r, s in roots.items() if s > 0), key=lambda kv: -kv[1])[:6]
    return {"forbidden_imported": sorted(r for r in roots if r in FORBIDDEN),
            "heavy_imported": sorted(r for r in roots if r in WATCH),
            "beyond_lightgbm": sorted(r for r in roots if r not in lgb_roots and not r.startswith("_")),
            "top_level_import_s": {r: round(s, 4) for r, s in top}}


def main() -> int:
    parser = base_parser(" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--runs", type=int, default=9, help="timed runs of each command (default 9)")
    args = parser.parse_args()

    with workdir(args.keep) as root:
        ws = build_workspace(root, n_rows=60, seed=args.seed)
        pp = script("predict-pair")
        python = script_interpreter(pp)
        a, b = ws["ids"][1], ws["ids"][2]
        cmd_pp = [pp, a, b, "--workspace", str(ws["ws"])]
        cmd_lgb = [python, "-c", "import lightgbm"]

        out = check_call(cmd_pp).stdout
        if not out.startswith(f"P({a} fine-tunes better than {b})"):
            sys.exit(f"unexpected predict-pair output:\n{out}")
        imports = import_report(python, cmd_pp)

        timed(cmd_lgb)  # warm-up: file cache, .pyc files
        timed(cmd_pp)
        walls = {"predict_pair": [], "import_lightgbm": []}
        cpus = {"predict_pair": [], "import_lightgbm": []}
        for i in range(args.runs):
            order = [("predict_pair", cmd_pp), ("import_lightgbm", cmd_lgb)]
            for key, cmd in (order if i % 2 == 0 else order[::-1]):
                w, c = timed(cmd)
                walls[key].append(w)
                cpus[key].append(c)
            log(f"run {i + 1}/{args.runs}: predict-pair {walls['predict_pair'][-1]:.3f}s, "
                f"import lightgbm {walls['import_lightgbm'][-1]:.3f}s")

    med = {k: median(v) for k, v in walls.items()}
    med_cpu = {k: median(v) for k, v in cpus.items()}
    ratio = med["predict_pair"] / med["import_lightgbm"]
    ratio_cpu = med_cpu["predict_pair"] / med_cpu["import_lightgbm"]
    ok_imports = not imports["forbidden_imported"]
    figures = {
        "runs": args.runs, "interpreter": python,
        "wall_s": {k: [round(x, 4) for x in v] for k, v in walls.items()},
        "median_wall_s": {k: round(v, 4) for k, v in med.items()},
        "median_cpu_s": {k: round(v, 4) for k, v in med_cpu.items()},
        "ratio": round(ratio, 3), "ratio_cpu": round(ratio_cpu, 3), "target": TARGET_RATIO,
        "within_target": ratio <= TARGET_RATIO, "imports": imports, "imports_ok": ok_imports,
    }
    lines = [
        f"predict-pair cold start: median wall {med['predict_pair']:.3f}s, cpu {med_cpu['predict_pair']:.3f}s "
        f"({args.runs} runs)",
        f"import lightgbm:         median wall {med['import_lightgbm']:.3f}s, cpu {med_cpu['import_lightgbm']:.3f}s",
        f"cpu-time ratio {ratio_cpu:.2f}",
        "imports on the predict-pair path: "
        + ("OK, none of " + ", ".join(FORBIDDEN) if ok_imports
           else "FAIL, imported " + ", ".join(imports["forbidden_imported"]))
        + (f"; heavy ones imported: {', '.join(imports['heavy_imported'])}" if imports["heavy_imported"] else ""),
        "packages imported beyond `import lightgbm`: " + (", ".join(imports["beyond_lightgbm"]) or "none"),
        "largest top-level imports (cumulative s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in imports["top_level_import_s"].items()),
    ]
    emit(figures, lines, f"RATIO predict_pair/import_lightgbm = {ratio:.2f} (target <= {TARGET_RATIO})", args.json)
    return 0 if ok_imports else 1


if __name__ == "__main__":
    sys.exit(main())
