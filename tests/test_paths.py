"""Names from users never escape the workspace; bad ones get one clear line.

Model names become ``<workspace>/models/<name>/`` (train --name, predict-pair/rank --model,
serve --name); evaluation results become ``<workspace>/evaluations/<target>__<split>.json``;
SFT adapters go to ``<workspace>/adapters/<fingerprint>/<task hash>/seed<k>`` (the task's
name is never part of the path); zoo presets and variants become ``<workspace>/zoo/<preset>/<variant>/``. Pickle checkpoints stay refused unless opted in: see
tests/test_checkpoints.py::test_pickle_checkpoint_refused_unless_allowed. That ``serve`` binds
127.0.0.1 is checked on a live server in test_serve.py and test_serve_fuzz.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ckptsel.cli import main
from ckptsel.errors import CkptselError
from ckptsel.workspace import Workspace, check_model_name

BAD_NAMES = ["../x", "..", ".", "/etc/passwd", "/tmp/x", "a/b", "a\\b", "a\x00b", "x\n", "\n", "",
             "~root", "-rf", "x/../../y", "." * 3, "a" * 200, "ok\r", "name with space"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_model_names_are_refused_with_one_line(name):
    with pytest.raises(CkptselError) as err:
        check_model_name(name)
    message = str(err.value)
    assert "\n" not in message and repr(name) in message
    assert "letters, digits" in message  # says what is allowed


@pytest.mark.parametrize("name", ["goodsel", "mc-v2", "ckptsel-sft-tiny_mc-acc", "A.b_c-1", "x" * 128])
def test_good_model_names_stay_under_models(tmp_path, name):
    ws = Workspace.resolve(tmp_path)
    path = ws.model_dir(name).resolve()
    assert path.parent == (tmp_path / "models").resolve()


@pytest.mark.parametrize("argv", [
    ["train", "--target", "ft", "--name", "../x"],
    ["train", "--target", "ft", "--name", "/tmp/evil"],
    ["train", "--target", "ft", "--name", "a/b"],
    ["train", "--target", "ft", "--name", "a\x00b"],
    ["predict-pair", "a", "b", "--model", "../../x"],
    ["predict-pair", "a", "b", "--model", "/etc"],
    ["rank", "--all", "--model", "../models"],
    ["serve", "--name", "../x@champion"],
    ["serve", "--name", "/abs/path"],
    ["serve", "--name", "a/b"],
    ["serve", "--name", "ok@../alias"],
    ["serve", "--name", "x\x00@champion"],
])
def test_cli_refuses_escaping_names_with_one_line_and_exit_2(tmp_path, capsys, argv):
    ws = tmp_path / "ws"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["--workspace", str(ws), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ckptsel: error: ") and "\n" not in err, err
    assert any(word in err for word in ("model name", "alias", "NAME@ALIAS")), err
    # nothing was written outside the workspace
    assert sorted(p.name for p in tmp_path.iterdir()) in (before, sorted(before + ["ws"]))
    assert not (tmp_path / "x").exists() and not (tmp_path / "evil").exists()


@pytest.mark.parametrize("target, split", [("../../evil", "random:0.6"), ("/etc/passwd", "group:../.."),
                                           ("a\x00b", "random:0.5"), ("..", ".."), ("x/" * 200, "random:0.6")])
def test_evaluation_results_stay_in_the_evaluations_directory(tmp_path, target, split):
    ws = Workspace.resolve(tmp_path / "ws").ensure()
    out = ws.save_evaluation({"target": target, "split": split, "value": 1})
    assert out.resolve().parent == ws.evaluations_dir.resolve()
    assert len(out.name) <= 255
    assert json.loads(out.read_text())["target"] == target
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [out]


def test_evaluation_keys_that_look_alike_get_their_own_files(tmp_path):
    ws = Workspace.resolve(tmp_path / "ws").ensure()
    paths = {ws.save_evaluation({"target": t, "split": "random:0.6"}) for t in ("a/b", "a_b", "a b", "a\x00b")}
    assert len(paths) == 4
    assert sorted(json.loads(p.read_text())["target"] for p in paths) == sorted(["a/b", "a_b", "a b", "a\x00b"])


def test_sft_adapter_directories_do_not_use_the_task_name(tmp_path):
    from ckptsel.finetune import adapter_dir, load_task

    data = Path(__file__).resolve().parents[1] / "data" / "sft"
    spec = tmp_path / "evil.yaml"
    spec.write_text(f"name: ../../../escape\ntype: multiple_choice\ntrain: {data / 'tiny_mc.train.jsonl'}\n"
                    f"eval: {data / 'tiny_mc.eval.jsonl'}\nmax_steps: 1\n")
    task = load_task(spec)
    assert task.name == "../../../escape"
    ckpt = SimpleNamespace(fingerprint="sha256:" + "ab" * 32)
    ws = tmp_path / "ws"
    path = adapter_dir(ws, ckpt, task, 0).resolve()
    assert path.is_relative_to((ws / "adapters").resolve())
    assert "escape" not in str(path)


ZOO_VARIANT = "  - {name: v1, lr: 0.001, save_steps: [5]}\n"


@pytest.mark.parametrize("preset_name", ["../../escape", "/tmp/escape", "a/b", "..", "x\\u0000y"])
def test_zoo_preset_names_that_would_escape_are_refused(tmp_path, capsys, preset_name):
    spec = tmp_path / "evil.yaml"
    spec.write_text(f'name: "{preset_name}"\nvariants:\n' + ZOO_VARIANT)
    assert main(["--workspace", str(tmp_path / "ws"), "zoo", "build", "--preset", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ckptsel: error: zoo preset name") and "\n" not in err, err
    assert not (tmp_path / "ws" / "zoo").exists() and not (tmp_path / "escape").exists()


@pytest.mark.parametrize("variant_name", ["../up", "/abs", "a/b", ".hidden", "a\\\\b", "a\\u0000b", "x@1"])
def test_zoo_variant_names_that_would_escape_are_refused(tmp_path, capsys, variant_name):
    spec = tmp_path / "evil.yaml"
    spec.write_text(f'name: fine\nvariants:\n  - {{name: "{variant_name}", lr: 0.001, save_steps: [5]}}\n')
    assert main(["--workspace", str(tmp_path / "ws"), "zoo", "build", "--preset", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert "zoo variant" in err and "\n" not in err, err
    assert not (tmp_path / "ws" / "zoo").exists()


def test_serve_binds_loopback_unless_host_is_given(tmp_path):
    from ckptsel.cli import build_parser
    from ckptsel.serving import serve_command

    ws = Workspace.resolve(tmp_path)
    argv, _ = serve_command(ws, "goodsel@champion")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    argv, _ = serve_command(ws, "goodsel@champion", host="0.0.0.0")
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
