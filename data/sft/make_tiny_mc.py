"""Regenerate data/sft/tiny_mc.{train,eval}.jsonl (run from the repo root); deterministic."""
import json, random
rng = random.Random(20240531)
words = "the of and to in is for that with as on by this be are from it an or not which can if at".split()
choices = ["yes", "no", "maybe", "never"]
def rows(n):
    out = []
    for _ in range(n):
        q = "Question: " + " ".join(rng.choice(words) for _ in range(6)) + "?\nAnswer:"
        c = choices[:]; rng.shuffle(c)
        out.append({"query": q, "choices": c, "gold": c.index("yes")})
    return out
for split, n in (("train", 64), ("eval", 32)):
    with open(f"data/sft/tiny_mc.{split}.jsonl", "w") as f:
        for r in rows(n): f.write(json.dumps(r) + "\n")
