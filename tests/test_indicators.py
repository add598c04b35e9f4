"""Indicators on tiny checkpoints small enough to check by hand.

Most tests use a byte-level tokenizer without merges (one token per UTF-8 byte, 256 + 3
special tokens = V = 259) and a *uniform* model (lm_head weights zeroed, so every logit is 0
and every next token has probability exactly 1/V). Then, by hand:

- a text of n ASCII bytes has n tokens, each costing ln V nats, so bits_per_byte = log2 V,
  token and byte perplexity = V and word perplexity = V^(bytes/words);
- a multiple-choice continuation " c" costs (len(c) + 1)·ln V, so ``acc`` picks the shortest
  choice (the first on ties) and ``acc_norm`` the largest −(len(c)+1)/len(c), i.e. the longest.

Random-init models are checked against plain ``transformers`` forward passes and
``generate`` (the peer), with contexts written from lm-eval's rules independently.
"""

from __future__ import annotations

import json
import math
import random
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ckptsel.errors import CkptselError  # noqa: E402
from ckptsel.store import Store  # noqa: E402

V = 259  # 256 byte tokens + <pad>, <s>, </s>
DOCS = ["Hello world, this is a test.",
        "Second document\nwith two lines and more words here to exceed the window."]
DOC_BYTES = 28 + 72  # counted by hand
DOC_WORDS = 6 + 13


# -- fixtures: tiny checkpoints ------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Checkpoints sharing a byte-level tokenizer: a run of two random models (steps 100, 200)
    and a uniform model (step 300 of the same run)."""
    from transformers import LlamaForCausalLM

    from ckptsel.tiny import build_tiny_checkpoint, train_tokenizer

    root = tmp_path_factory.mktemp("indicator-models")
    tok = train_tokenizer("byte level text " * 20, vocab_size=V)
    tok_dir = root / "tokenizer"
    tok.save_pretrained(tok_dir)
    run = root / "run"
    paths = {}
    for step, seed in ((100, 1), (200, 2), (300, 3)):
        paths[step] = build_tiny_checkpoint(run / f"checkpoint-{step}", seed=seed, tokenizer_dir=tok_dir, step=step)
    uniform = LlamaForCausalLM.from_pretrained(paths[300])
    with torch.no_grad():
        uniform.lm_head.weight.zero_()
    uniform.save_pretrained(paths[300])
    return {"run": run, "tok": tok_dir, **paths}


def _lm(path, max_length=None):
    from ckptsel.checkpoints import load_model
    from ckptsel.indicators.lm import HFScoringLM

    model, tok = load_model(path, device="cpu", dtype="float32")
    return HFScoringLM(model, tok, max_length=max_length)


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MC_ROWS = [  # hand-picked choice lengths; see the module docstring for the expected picks
    {"query": "Q: pick one\nA:", "choices": ["a", "bbbb", "cc"], "gold": 0},
    {"query": "Q: another\nA:", "choices": ["xyz", "pq", "longer answer"], "gold": 2},
    {"query": "Q: a tie\nA:", "choices": ["same", "also"], "gold": 1},
]


@pytest.fixture
def spec_dir(tmp_path):
    """A spec over DOCS, a span-corruption corpus, the MC task above and a generative task."""
    d = tmp_path / "spec"
    d.mkdir()
    _jsonl(d / "docs.jsonl", [{"text": t} for t in DOCS])
    _jsonl(d / "mc.jsonl", MC_ROWS)
    _jsonl(d / "gen.jsonl", [{"query": "Say hi:", "answer": "hi"}, {"query": "Say yo:", "answer": "yo"}])
    _write(d / "mc.yaml", """
        name: hand_mc
        type: multiple_choice
        test: mc.jsonl
    """)
    _write(d / "gen.yaml", """
        name: hand_gen
        type: generate_until
        test: gen.jsonl
        until: ["\\n"]
        max_gen_tokens: 4
    """)
    _write(d / "spec.yaml", """
        name: hand
        max_length: 32
        batch_size: 4
        corpora:
          - {name: docs, path: docs.jsonl}
        span_corruption:
          - {name: docs, path: docs.jsonl, seed: 0, max_documents: null}
        tasks: [mc.yaml, gen.yaml]
    """)
    return d


# -- perplexity ----------------------------------------------------------------------------------
def test_uniform_model_perplexity_closed_form(models):
    from ckptsel.indicators.perplexity import corpus_perplexity

    got = corpus_perplexity(_lm(models[300], max_length=16), DOCS)  # 16 < 72 bytes: several windows
    assert got["bits_per_byte"] == pytest.approx(math.log2(V), rel=1e-6)
    assert got["token_perplexity"] == pytest.approx(V, rel=1e-5)
    assert got["byte_perplexity"] == pytest.approx(V, rel=1e-5)
    assert got["word_perplexity"] == pytest.approx(V ** (DOC_BYTES / DOC_WORDS), rel=1e-5)


def test_uniform_bpe_model_bits_per_byte(tmp_path):
    """With a merging BPE tokenizer: bits_per_byte = n_tokens·ln V / (ln 2 · n_bytes)."""
    from transformers import LlamaForCausalLM

    from ckptsel.indicators.perplexity import corpus_perplexity
    from ckptsel.tiny import build_tiny_checkpoint, train_tokenizer

    tok = train_tokenizer("Hello world, this is a test. Second document with two lines. " * 30, vocab_size=300)
    tok.save_pretrained(tmp_path / "tok")
    path = build_tiny_checkpoint(tmp_path / "bpe", tokenizer_dir=tmp_path / "tok")
    model = LlamaForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(path)
    n_tokens = sum(len(tok.encode(d)) for d in DOCS)
    assert n_tokens < DOC_BYTES  # merges happened
    vocab = model.config.vocab_size
    got = corpus_perplexity(_lm(path, max_length=8), DOCS)
    assert got["bits_per_byte"] == pytest.approx(n_tokens * math.log(vocab) / (math.log(2) * DOC_BYTES), rel=1e-6)
    assert got["token_perplexity"] == pytest.approx(vocab, rel=1e-5)


def test_rolling_windows_match_lm_eval_docstring_example():
    """lm-eval's LM.loglikelihood_rolling docstring: tokens 0..9, prefix BOS, max length 4."""
    from ckptsel.indicators.perplexity import rolling_windows

    BOS = -1
    windows = rolling_windows(list(range(10)), BOS, 4)
    inputs = [(ctx + pred)[-5:][:-1] for ctx, pred in windows]
    assert inputs == [[BOS, 0, 1, 2], [3, 4, 5, 6], [5, 6, 7, 8]]
    assert [pred for _, pred in windows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def _lm_eval_context(tokens, i, L, prefix):
    """The tokens that condition token i under lm-eval's rolling windows, written per token:
    the first L tokens see the prefix and what precedes them; then blocks of L tokens each read
    a full window starting one token before the block; the last, partial block reads the L
    tokens ending just before the document's last token."""
    n = len(tokens)
    if i < L:
        return [prefix] + tokens[:i]
    start = L + ((i - L) // L) * L
    if start + L <= n:
        return tokens[start - 1:i]
    return tokens[n - L - 1:i]


def test_rolling_perplexity_equals_per_token_contexts(models):
    from ckptsel.indicators.perplexity import corpus_perplexity

    L = 16
    text = DOCS[1]
    lm = _lm(models[100], max_length=L)
    tokens = lm.tok_encode(text)
    assert len(tokens) == 72 and 72 % L != 0  # a partial last window
    expected = 0.0
    with torch.no_grad():
        for i, t in enumerate(tokens):
            ctx = _lm_eval_context(tokens, i, L, lm.prefix_token_id)
            assert 1 <= len(ctx) <= L
            logits = lm.model(torch.tensor([ctx])).logits[0, -1]
            expected -= torch.log_softmax(logits.double(), -1)[t].item()
    got = corpus_perplexity(lm, [text], batch_size=3)
    assert math.log(got["token_perplexity"]) * len(tokens) == pytest.approx(expected, rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(expected / 72 / math.log(2), rel=1e-5)


# -- span corruption -----------------------------------------------------------------------------
def test_sentinels_by_hand():
    from ckptsel.indicators.span_corruption import apply_sentinels, split_words

    words = split_words("The quick brown fox jumps over the lazy dog")
    ctx, tgt = apply_sentinels(words, [0, 1, 1, 0, 0, 0, 0, 1, 0])
    assert ctx == "The <extra_id_0> fox jumps over the <extra_id_1> dog"
    assert tgt == "<extra_id_0> quick brown<extra_id_1> lazy"


def test_noise_mask_shape_and_determinism():
    from ckptsel.indicators.span_corruption import corrupt, random_spans_noise_mask

    text = " ".join(f"w{i}" for i in range(40))
    a = corrupt(text, doc_index=3, seed=7)
    b = corrupt(text, doc_index=3, seed=7)
    assert (a.context, a.target, a.mask.tolist()) == (b.context, b.target, b.mask.tolist())
    # 40 words at density 0.15: round(6) noise words in round(6/3) = 2 spans; starts clean, ends noisy
    m = a.mask.astype(int)
    assert m.sum() == 6 and m[0] == 0 and m[-1] == 1
    assert np.sum(np.diff(m) == 1) == 2
    assert a.context.count("<extra_id_") == 2 and a.target.startswith("<extra_id_0> ")
    # another seed, or another document index, gives other spans
    assert any(corrupt(text, doc_index=3, seed=s).mask.tolist() != m.tolist() for s in range(8, 12))
    assert any(corrupt(text, doc_index=d, seed=7).mask.tolist() != m.tolist() for d in range(4, 8))
    # T5's degenerate cases: at least one noise and one clean item
    rng = np.random.default_rng(0)
    assert random_spans_noise_mask(2, 0.15, 3, rng).tolist() == [False, True]


def test_span_corruption_uniform_closed_form(models):
    """Uniform model, byte tokens: every target byte costs ln V, so PPL-SC = V and bpb = log2 V."""
    from ckptsel.indicators.span_corruption import span_corruption_perplexity

    got = span_corruption_perplexity(_lm(models[300], max_length=64), DOCS, seed=0)
    assert got["token_perplexity"] == pytest.approx(V, rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(math.log2(V), rel=1e-6)


# -- k-shot --------------------------------------------------------------------------------------
def test_multiple_choice_acc_and_acc_norm_by_hand(models, spec_dir):
    from ckptsel.indicators.kshot import run_task
    from ckptsel.indicators.spec import load_task

    result = run_task(_lm(models[300]), load_task(spec_dir / "mc.yaml"))
    # acc picks the fewest tokens: "a" (2), "pq" (3), tie -> first; acc_norm the longest choice:
    # -5/4 > -3/2 > -2/1 -> "bbbb"; -14/13 -> "longer answer"; tie -> first.
    assert result.predictions["acc"].tolist() == [0, 1, 0]
    assert result.predictions["acc_norm"].tolist() == [1, 2, 0]
    assert result.predictions["acc"].dtype == result.predictions["acc_norm"].dtype == np.int16
    assert result.metrics == {"acc": pytest.approx(1 / 3), "acc_norm": pytest.approx(1 / 3)}


def test_batched_tokenisation_follows_lm_eval_encode_pair():
    from ckptsel.indicators.lm import ScoringLM
    from ckptsel.tiny import train_tokenizer

    lm = ScoringLM()
    lm.tokenizer = train_tokenizer("the cat sat on the mat. " * 50, vocab_size=300)
    enc = lm.tokenizer.encode
    # trailing whitespace of the context moves to the continuation
    assert lm.encode_pair("the cat ", "sat") == (enc("the cat"), enc("the cat sat")[len(enc("the cat")):])
    # an empty context becomes the prefix token (BOS = 1)
    assert lm.encode_pair("", " the mat") == ([1], enc(" the mat"))
    pairs = [("the cat", " sat"), ("the cat ", "sat"), ("", " the mat"), ("on the", " mat."), ("the cat", " on")]
    assert lm.encode_pairs(pairs) == [lm.encode_pair(c, x) for c, x in pairs]
    assert lm.tok_encode_many(["the cat", "<s>mat"]) == [lm.tok_encode("the cat"), lm.tok_encode("<s>mat")]


def test_shared_context_scoring_equals_separate_requests(models):
    from ckptsel.indicators.batching import loglikelihood, loglikelihood_groups

    lm = _lm(models[100])
    rng = random.Random(0)
    def toks(lo, hi):
        return [rng.randrange(3, 250) for _ in range(rng.randrange(lo, hi))]

    # long contexts with short choices share the context; the last two groups are scored flat
    groups = [(toks(8, 20), [toks(1, 6) for _ in range(rng.randrange(2, 5))]) for _ in range(9)]
    groups += [(toks(1, 3), [toks(5, 9), toks(5, 9)]), (toks(5, 9), [toks(1, 4)])]
    grouped = [s.logprob for g in loglikelihood_groups(lm, groups, batch_size=4) for s in g]
    flat = [s.logprob for s in loglikelihood(lm, [(c, x) for c, xs in groups for x in xs], batch_size=5)]
    with torch.no_grad():  # and against one plain forward per request
        plain = []
        for c, xs in groups:
            for x in xs:
                logp = torch.log_softmax(lm.model(torch.tensor([c + x[:-1]])).logits[0].double(), -1)
                plain.append(sum(logp[len(c) - 1 + j, t].item() for j, t in enumerate(x)))
    assert grouped == pytest.approx(plain, abs=1e-4)
    assert flat == pytest.approx(plain, abs=1e-4)


def test_fewshot_examples_follow_lm_eval_sampler(spec_dir):
    from dataclasses import replace

    from ckptsel.indicators.kshot import build_contexts, load_rows
    from ckptsel.indicators.spec import load_task

    pool = [{"query": f"q{i}", "choices": ["x", "y"], "gold": i % 2} for i in range(6)]
    _jsonl(spec_dir / "pool.jsonl", pool)
    task = replace(load_task(spec_dir / "mc.yaml"), fewshot=spec_dir / "pool.jsonl", num_fewshot=2)
    test, fs = load_rows(task)
    rnd = random.Random(1234)  # lm-eval: one Random(fewshot_seed), advanced through the test docs
    expected = []
    for row in test:
        shots = rnd.sample(pool, 2)
        expected.append("".join(f"{s['query']} {s['choices'][s['gold']]}\n\n" for s in shots) + row["query"])
    assert build_contexts(task, test, fs) == expected
    # Without a fewshot file the pool is the test set, never including the row itself.
    self_pool = build_contexts(replace(task, fewshot=None, num_fewshot=2), test, None)
    for ctx, row in zip(self_pool, test):
        assert ctx.endswith(row["query"]) and ctx.count(row["query"]) == 1


def test_generation_matches_transformers_generate(models, spec_dir):
    from dataclasses import replace

    from ckptsel.indicators.batching import greedy_generate
    from ckptsel.indicators.kshot import run_task
    from ckptsel.indicators.spec import load_task

    lm = _lm(models[100])
    prompts = ["Say hi:", "A longer prompt here:", "x"]
    ids = [lm.tok_encode(p) for p in prompts]
    ours = greedy_generate(lm, ids, until=["\n", "e"], max_new_tokens=6, batch_size=2)
    peer = []
    for x in ids:
        out = lm.model.generate(torch.tensor([x]), max_new_tokens=6, do_sample=False,
                                attention_mask=torch.ones(1, len(x), dtype=torch.long), pad_token_id=0)
        text = lm.tokenizer.decode(out[0, len(x):].tolist())
        for stop in ("\n", "e", "</s>"):
            text = text.split(stop)[0]
        peer.append(text)
    assert ours == peer
    # exact match: answers equal to the greedy output (after strip) for one row of two
    first = greedy_generate(lm, [lm.tok_encode("Say hi:")], until=["\n"], max_new_tokens=4)[0]
    _jsonl(spec_dir / "gen.jsonl", [{"query": "Say hi:", "answer": f" {first.strip()} "},
                                    {"query": "Say yo:", "answer": "not this" + first}])
    result = run_task(lm, replace(load_task(spec_dir / "gen.yaml")))
    assert result.metrics == {"exact_match": 0.5}
    assert list(result.predictions) == ["exact_match"] and result.predictions["exact_match"].tolist() == [1, 0]


# -- the store: caching, spec hashes, predictions, windows ---------------------------------------
def _features(store: Store, ckpt_id: str) -> dict:
    return store.feature_frame([ckpt_id]).as_dict(0)


def test_run_indicators_stores_caches_and_rehashes(models, spec_dir, tmp_path):
    from ckptsel.checkpoints import add_checkpoints
    from ckptsel.indicators import run_indicators
    from ckptsel.indicators.spec import load_spec

    with Store(tmp_path / "ws" / "ckptsel.db") as store:
        (ckpt,) = add_checkpoints(store, [models[300]])
        spec = load_spec(spec_dir / "spec.yaml")
        first = run_indicators(store, [ckpt], spec, device="cpu", progress=False, log=lambda m: None)
        assert first.computed_units == 4 and first.cached_units == 0
        feats = _features(store, ckpt.id)
        assert feats["ppl/docs/bits_per_byte"] == pytest.approx(math.log2(V), rel=1e-6)
        assert feats["ppl_sc/docs/token_perplexity"] == pytest.approx(V, rel=1e-5)
        assert feats["kshot/hand_mc/acc"] == pytest.approx(1 / 3)
        assert feats["kshot/hand_gen/exact_match"] == 0.0
        assert store.predictions("kshot/hand_mc/acc")[ckpt.fingerprint].tolist() == [0, 1, 0]
        assert store.predictions("kshot/hand_mc/acc_norm")[ckpt.fingerprint].tolist() == [1, 2, 0]
        assert store.predictions("kshot/hand_gen/exact_match")[ckpt.fingerprint].tolist() == [0, 0]

        again = run_indicators(store, [ckpt], spec, device="cpu", progress=False, log=lambda m: None)
        assert again.computed_units == 0 and again.cached_units == 4

        # Changing one corpus file changes that unit's hash only: one unit recomputed (two, as
        # span corruption reads the same file), stored next to the old rows.
        _jsonl(spec_dir / "docs.jsonl", [{"text": DOCS[0]}])
        changed = run_indicators(store, [ckpt], load_spec(spec_dir / "spec.yaml"), device="cpu",
                                 progress=False, log=lambda m: None)
        assert changed.computed_units == 2 and changed.cached_units == 2
        hashes = store.conn.execute("SELECT COUNT(DISTINCT spec_hash) FROM features WHERE name=?",
                                    ("ppl/docs/word_perplexity",)).fetchone()[0]
        assert hashes == 2
        assert _features(store, ckpt.id)["ppl/docs/word_perplexity"] == pytest.approx(V ** (28 / 6), rel=1e-5)
        # A new dtype is a new spec too.
        assert run_indicators(store, [ckpt], load_spec(spec_dir / "spec.yaml"), device="cpu", dtype="bfloat16",
                              progress=False, log=lambda m: None).computed_units == 4


def test_window_features(models, spec_dir, tmp_path):
    """avg@2 against an independent torch mean of the weights; ens@2 against the mean of two
    plain forward passes' probabilities."""
    from transformers import LlamaForCausalLM

    from ckptsel.checkpoints import add_checkpoints
    from ckptsel.indicators import run_indicators, window_members
    from ckptsel.indicators.perplexity import corpus_perplexity
    from ckptsel.indicators.spec import load_spec

    _write(spec_dir / "ppl_only.yaml", """
        name: ppl_only
        max_length: 128
        corpora: [{name: docs, path: docs.jsonl}]
    """)
    spec = load_spec(spec_dir / "ppl_only.yaml")
    with Store(tmp_path / "ws" / "ckptsel.db") as store:
        ckpts = add_checkpoints(store, [models[100], models[200]], run="r")
        assert [c.id for c in window_members(store, ckpts[1], 2)] == ["r@100", "r@200"]
        assert [c.id for c in window_members(store, ckpts[0], 2)] == ["r@100"]
        report = run_indicators(store, ckpts, spec, device="cpu", average_window=2, ensemble_window=2,
                                progress=False, log=lambda m: None)
        assert report.computed_units == 6
        f200 = _features(store, "r@200")
        assert {"avg@2/ppl/docs/bits_per_byte", "ens@2/ppl/docs/bits_per_byte"} <= set(f200)
        # A window of one is the checkpoint itself.
        f100 = _features(store, "r@100")
        for name in ("bits_per_byte", "word_perplexity"):
            assert f100[f"avg@2/ppl/docs/{name}"] == pytest.approx(f100[f"ppl/docs/{name}"], rel=1e-6)
            assert f100[f"ens@2/ppl/docs/{name}"] == pytest.approx(f100[f"ppl/docs/{name}"], rel=1e-6)

        a = LlamaForCausalLM.from_pretrained(models[100])
        b = LlamaForCausalLM.from_pretrained(models[200])
        mean = LlamaForCausalLM.from_pretrained(models[200])
        sa, sb = a.state_dict(), b.state_dict()
        mean.load_state_dict({k: (sa[k] + sb[k]) / 2 for k in sa})
        mean.save_pretrained(tmp_path / "mean")
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (tmp_path / "mean" / f).write_bytes((Path(models[200]) / f).read_bytes())
        expected = corpus_perplexity(_lm(tmp_path / "mean", max_length=128), DOCS)["bits_per_byte"]
        assert f200["avg@2/ppl/docs/bits_per_byte"] == pytest.approx(expected, rel=1e-5)

        lm = _lm(models[200])
        nll = 0.0
        with torch.no_grad():
            for text in DOCS:
                ids = [lm.prefix_token_id] + lm.tok_encode(text)
                x = torch.tensor([ids[:-1]])
                p = (torch.softmax(a(x).logits[0].double(), -1) + torch.softmax(b(x).logits[0].double(), -1)) / 2
                nll -= torch.log(p[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]).sum().item()
        assert f200["ens@2/ppl/docs/bits_per_byte"] == pytest.approx(nll / DOC_BYTES / math.log(2), rel=1e-5)

        again = run_indicators(store, ckpts, spec, device="cpu", average_window=2, ensemble_window=2,
                               progress=False, log=lambda m: None)
        assert again.computed_units == 0


# -- CLI and spec errors ---------------------------------------------------------------------------
def test_cli_indicators_and_features_show(models, spec_dir, tmp_path, capsys):
    from ckptsel.cli import main

    ws = str(tmp_path / "ws")
    assert main(["indicators", str(models[300]), "--spec", str(spec_dir / "spec.yaml"), "--workspace", ws,
                 "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["computed_units"] == 4
    assert main(["features", "show", "run@300", "--workspace", ws, "--json"]) == 0  # run = parent folder
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == "run@300" and len({v["spec"] for v in shown["features"]}) == 4  # one spec per unit
    shown = {v["name"]: v["value"] for v in shown["features"]}
    assert shown["ppl/docs/token_perplexity"] == pytest.approx(V, rel=1e-5)
    assert shown["kshot/hand_mc/acc_norm"] == pytest.approx(1 / 3)
    # the stored checkpoint by id: nothing left to compute
    assert main(["indicators", "run@300", "--spec", str(spec_dir / "spec.yaml"), "--workspace", ws,
                 "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["computed_units"] == 0


def test_spec_errors_are_one_line(spec_dir):
    from ckptsel.indicators.spec import load_spec

    cases = {
        "missing.yaml": None,
        "bad_path.yaml": "corpora: [{name: x, path: nope.jsonl}]\n",
        "bad_key.yaml": "corpora: [{name: x, path: docs.jsonl, colour: red}]\n",
        "empty.yaml": "name: empty\n",
        "dupe.yaml": "corpora: [{name: x, path: docs.jsonl}, {name: x, path: docs.jsonl}]\n",
    }
    for name, text in cases.items():
        if text is not None:
            (spec_dir / name).write_text(text)
        with pytest.raises(CkptselError) as e:
            load_spec(spec_dir / name).units()
        assert "\n" not in str(e.value) and re.search(r"\w", str(e.value))


def test_default_specs_load():
    from ckptsel.indicators.spec import load_spec

    root = Path(__file__).resolve().parents[1] / "configs" / "indicators"
    names = [n for u in load_spec(root / "default.yaml").units() for n in u.feature_names]
    assert "ppl/stdlib/bits_per_byte" in names and "kshot/stdlib_mc/acc_norm" in names
    assert "kshot/stdlib_cloze/exact_match" in names and "ppl_sc/stdlib/token_perplexity" in names
    assert load_spec(root / "tiny.yaml").tasks[0].limit == 12


def test_shared_context_chunks_of_mixed_length_choices(models):
    """Many choices of mixed lengths (single-token ones too) in one batch of groups, so the
    second pass runs in several length-sorted chunks: each choice's log-likelihood and
    is_greedy equal one plain forward pass per request."""
    from ckptsel.indicators.batching import loglikelihood_groups

    lm = _lm(models[200])
    rng = random.Random(1)
    def toks(n):
        return [rng.randrange(3, 250) for _ in range(n)]

    groups = [(toks(rng.randrange(30, 40)), [toks(rng.choice([1, 2, 3, 7, 12])) for _ in range(8)])
              for _ in range(6)]  # 6 groups x 8 choices = 48 rows: three chunks of 16
    scored = [s for g in loglikelihood_groups(lm, groups, batch_size=8) for s in g]
    with torch.no_grad():
        plain, greedy = [], []
        for c, xs in groups:
            for x in xs:
                logp = torch.log_softmax(lm.model(torch.tensor([c + x[:-1]])).logits[0].double(), -1)
                rows = logp[len(c) - 1:]
                plain.append(sum(rows[j, t].item() for j, t in enumerate(x)))
                greedy.append(all(rows[j].argmax().item() == t for j, t in enumerate(x)))
    assert [s.logprob for s in scored] == pytest.approx(plain, abs=1e-4)
    assert [s.is_greedy for s in scored] == greedy


# -- long inputs, shipped names, legacy stores, warnings -------------------------------------------
def test_long_continuation_is_scored_in_pieces(models):
    """A continuation longer than max_length: each piece of L tokens reads the L tokens before
    its last token, as a request of its own (ctx + earlier pieces, cut from the left)."""
    from ckptsel.indicators.batching import loglikelihood

    L = 8
    lm = _lm(models[100], max_length=L)
    rng = random.Random(2)
    ctx, cont = [rng.randrange(3, 250) for _ in range(5)], [rng.randrange(3, 250) for _ in range(19)]
    expected = 0.0
    with torch.no_grad():
        for start in (0, 8, 16):  # pieces of 8, 8 and 3 tokens
            piece = cont[start:start + L]
            whole = (ctx + cont[:start + len(piece)])[-(L + 1):]
            logp = torch.log_softmax(lm.model(torch.tensor([whole[:-1]])).logits[0].double(), -1)
            expected += sum(logp[len(whole) - 1 - len(piece) + j, t].item() for j, t in enumerate(piece))
    (got,) = loglikelihood(lm, [(ctx, cont)], batch_size=2)
    assert len(got.token_logprobs) == 19
    assert got.logprob == pytest.approx(expected, abs=1e-4)


def test_span_corruption_windows(models):
    """A document whose target exceeds max_length is scored in windows that each fit whole; on
    the uniform byte-level model every target byte still costs ln V."""
    from ckptsel.indicators.span_corruption import (corrupt, document_requests, span_corruption_perplexity,
                                                    split_words, windows)

    assert windows(split_words("a b c d e"), 2) == [["a", " b", " c"], ["d", " e"]]
    assert windows(split_words("a b c d e"), 3) == [["a", " b"], ["c", " d"], ["e"]]
    lm = _lm(models[300], max_length=48)
    long_doc = " ".join(f"word{i}" for i in range(120))
    assert len(corrupt(long_doc, doc_index=1, seed=0).target.encode()) > 48  # does not fit as one
    reqs = document_requests(lm, long_doc, doc_index=1, seed=0)
    assert len(reqs) > 1 and all(len(c) + len(t) <= 49 for c, t, _ in reqs)
    assert document_requests(lm, long_doc, doc_index=1, seed=0) == reqs  # deterministic
    # a document that fits is one request, exactly as before windows existed
    (ctx, tgt, n_bytes), = document_requests(lm, DOCS[0], doc_index=0, seed=0)
    c = corrupt(DOCS[0], doc_index=0, seed=0)
    assert ctx[0] == 1 and lm.decode(ctx[1:]) == c.context + "\n" and lm.decode(tgt) == c.target
    assert len(ctx) == 2 + len(c.context) and len(tgt) == n_bytes == len(c.target)  # ASCII: a token a byte
    got = span_corruption_perplexity(lm, [DOCS[0], long_doc], seed=0)
    assert got["token_perplexity"] == pytest.approx(V, rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(math.log2(V), rel=1e-6)


def test_shipped_default_spec_on_a_128_token_model(models, tmp_path):
    """configs/indicators/default.yaml end to end on a uniform model with a 128-token context:
    long span-corruption targets and 300-character choices no longer fail, and every number
    has its closed form (each byte token costs ln V)."""
    from transformers import LlamaForCausalLM

    from ckptsel.checkpoints import add_checkpoints
    from ckptsel.indicators import run_indicators
    from ckptsel.indicators.span_corruption import corrupt
    from ckptsel.indicators.spec import load_documents, load_spec, read_jsonl
    from ckptsel.tiny import build_tiny_checkpoint

    root = Path(__file__).resolve().parents[1]
    path = build_tiny_checkpoint(tmp_path / "ctx128", tokenizer_dir=models["tok"], max_position_embeddings=128)
    model = LlamaForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(path)
    spec = load_spec(root / "configs" / "indicators" / "default.yaml")
    docs = load_documents(root / "data" / "corpora" / "stdlib_docs.jsonl", 200)
    assert max(len(corrupt(d, doc_index=i, seed=0).target.encode()) for i, d in enumerate(docs)) > 128
    with Store(tmp_path / "ws" / "ckptsel.db") as store:
        (ckpt,) = add_checkpoints(store, [path])
        run = run_indicators(store, [ckpt], spec, device="cpu", progress=False, log=lambda m: None)
        assert run.computed_units == 6
        f = _features(store, ckpt.id)
    for name in ("ppl/stdlib", "ppl/licenses", "ppl_sc/stdlib"):
        assert f[f"{name}/token_perplexity"] == pytest.approx(V, rel=1e-5)
        assert f[f"{name}/bits_per_byte"] == pytest.approx(math.log2(V), rel=1e-6)
    # " " + choice costs len(" " + choice) byte tokens: acc picks the shortest, acc_norm the
    # largest -(n+1)/n (the longest), the first on ties
    rows = read_jsonl(root / "data" / "tasks" / "licenses_next.test.jsonl")
    assert max(len(c.encode()) for r in rows for c in r["choices"]) > 128
    n = [[len(c.encode()) + 1 for c in r["choices"]] for r in rows]
    acc = np.mean([int(np.argmin(k)) == r["gold"] for k, r in zip(n, rows)])
    acc_norm = np.mean([int(np.argmax([-k_i / len(c) for k_i, c in zip(k, r["choices"])])) == r["gold"]
                        for k, r in zip(n, rows)])
    assert f["kshot/licenses_next/acc"] == pytest.approx(acc)
    assert f["kshot/licenses_next/acc_norm"] == pytest.approx(acc_norm)
    assert f["kshot/stdlib_cloze/exact_match"] == 0.0  # every greedy token is <pad> (id 0, ties)


def test_spec_names_shipped_data_from_anywhere(tmp_path):
    from ckptsel.indicators.spec import load_spec

    root = Path(__file__).resolve().parents[1]
    data = root / "data"
    (tmp_path / "local.jsonl").write_text('{"text": "a local corpus"}\n')
    _write(tmp_path / "named.yaml", """
        name: named
        corpora:
          - {name: stdlib, path: stdlib_docs}
          - {name: zoo_python, path: zoo_python}
          - {name: mine, path: local.jsonl}
        span_corruption:
          - {name: stdlib, path: stdlib_docs}
        tasks: [stdlib_mc, {path: zoo_kshot_domain, limit: 5}]
    """)
    spec = load_spec(tmp_path / "named.yaml")
    assert [c.path for c in spec.corpora] == [data / "corpora/stdlib_docs.jsonl", data / "zoo/indicators/python.jsonl",
                                              tmp_path / "local.jsonl"]
    assert spec.span_corruption[0].path == data / "corpora/stdlib_docs.jsonl"
    assert [t.source for t in spec.tasks] == [data / "tasks/stdlib_mc.yaml", data / "zoo/indicators/zoo_kshot_domain.yaml"]
    assert spec.tasks[1].limit == 5
    # a name and the path it stands for give the same spec hash
    _write(tmp_path / "by_path.yaml", f"""
        name: named
        corpora: [{{name: stdlib, path: {data}/corpora/stdlib_docs.jsonl}}]
    """)
    by_name = spec.units()[0].spec_hash(dtype="float32")
    assert load_spec(tmp_path / "by_path.yaml").units()[0].spec_hash(dtype="float32") == by_name
    # an unknown name: one line listing the shipped ones
    (tmp_path / "bad.yaml").write_text("tasks: [stdlib_mcq]\n")
    with pytest.raises(CkptselError, match=r"'stdlib_mcq' is not a shipped task \(shipped: licenses_next, "
                                           r"stdlib_cloze, stdlib_mc, zoo_kshot_domain, zoo_kshot_ending\)") as e:
        load_spec(tmp_path / "bad.yaml")
    assert "\n" not in str(e.value)


def test_rerun_on_a_store_with_one_prediction_array_per_task(models, spec_dir, tmp_path):
    """A store written before predictions were kept per metric (one ``kshot/<task>`` array):
    a rerun computes the k-shot units again and stores each metric's picks."""
    from ckptsel.checkpoints import add_checkpoints
    from ckptsel.indicators import run_indicators
    from ckptsel.indicators.spec import load_spec

    spec = load_spec(spec_dir / "spec.yaml")
    with Store(tmp_path / "ws" / "ckptsel.db") as store:
        (ckpt,) = add_checkpoints(store, [models[300]])
        run_indicators(store, [ckpt], spec, device="cpu", progress=False, log=lambda m: None)
        with store.transaction():  # what an old run left: the acc picks under the task's name only
            for task in ("hand_mc", "hand_gen"):
                (h,) = {r[0] for r in store.conn.execute("SELECT spec_hash FROM predictions WHERE task LIKE ?",
                                                         (f"kshot/{task}/%",))}
                store.conn.execute("DELETE FROM predictions WHERE task LIKE ?", (f"kshot/{task}/%",))
                store.put_predictions(ckpt.fingerprint, f"kshot/{task}", np.zeros(3, dtype=np.int16), spec_hash=h)
        again = run_indicators(store, [ckpt], spec, device="cpu", progress=False, log=lambda m: None)
        assert (again.computed_units, again.cached_units) == (2, 2)  # the k-shot units; ppl and ppl_sc cached
        assert store.predictions("kshot/hand_mc/acc")[ckpt.fingerprint].tolist() == [0, 1, 0]
        assert store.predictions("kshot/hand_mc/acc_norm")[ckpt.fingerprint].tolist() == [1, 2, 0]
        assert store.predictions("kshot/hand_gen/exact_match")[ckpt.fingerprint].tolist() == [0, 0]


def test_no_transformers_warnings_on_gpt2_and_llama(models, spec_dir, tmp_path, caplog):
    """The forward passes use the current cache argument and an explicit attention mask, so
    neither the ``past_key_values`` deprecation nor GPT-2's padding warning is emitted."""
    import warnings

    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from ckptsel.checkpoints import add_checkpoints
    from ckptsel.indicators import run_indicators
    from ckptsel.indicators.spec import load_spec

    torch.manual_seed(0)  # GPT-2 warns about padding only when its config names a pad token
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2))
    gpt2.save_pretrained(tmp_path / "gpt2")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "gpt2" / f).write_bytes((Path(models[100]) / f).read_bytes())
    spec = load_spec(spec_dir / "spec.yaml")  # padded batches, a shared-context cache, generation
    hf_logging.warning_once.cache_clear()  # a warning seen earlier in this process would not repeat
    hf_logging.enable_propagation()
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING", logger="transformers"):
            warnings.simplefilter("always")
            with Store(tmp_path / "ws" / "ckptsel.db") as store:
                ckpts = add_checkpoints(store, [models[100], tmp_path / "gpt2"])
                run = run_indicators(store, ckpts, spec, device="cpu", progress=False, log=lambda m: None)
    finally:
        hf_logging.disable_propagation()
    assert run.computed_units == 8
    messages = [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught]
    assert not [m for m in messages if "past_key_values" in m or "attention_mask" in m], messages
