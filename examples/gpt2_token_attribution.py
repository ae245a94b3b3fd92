"""Which training text is behind each generated token? A worked example.

    python examples/gpt2_token_attribution.py                 # ~ a few minutes on 2 cores
    python examples/gpt2_token_attribution.py --text my.txt --prompt "The "

1. Train a small GPT-2 (Hugging Face ``transformers``, random init, character level: no
   tokenizer, nothing downloaded) on a text file. By default the file is the license text
   that ships with Python's standard library (found from the running interpreter).
2. Generate a continuation of a prompt.
3. Attribute every generated token to the training sequences with grass: every trainable
   parameter by default (embeddings tied to the head, Conv1D, LayerNorms),
   FactGraSS compression, a block-diagonal Fisher, and one test row per generated token
   (``TokenLogProbs``). Print, per token, the training sequences that helped most, as text.

See docs/examples.md for a walk-through and what the output means.
"""
from __future__ import annotations

import argparse
import os
import sys
import sysconfig
import tempfile
import warnings

import torch
from torch import nn


def default_text() -> str:
    """The license text shipped with the running Python's standard library (or, where a
    distribution left it out, the source of the standard library's ``this`` module)."""
    path = os.path.join(sysconfig.get_paths()["stdlib"], "LICENSE.txt")
    if os.path.exists(path):
        return path
    import this  # noqa: F401  (prints the Zen of Python once)
    return sys.modules["this"].__file__


def sequences(text: str, length: int, count: int) -> torch.Tensor:
    """``count`` byte sequences of ``length`` from evenly spaced offsets of the text."""
    data = torch.tensor(list(text.encode("utf-8", errors="replace")), dtype=torch.long)
    if data.numel() < length + 1:
        raise ValueError(f"the text has {data.numel()} bytes; need at least {length + 1}")
    starts = torch.linspace(0, data.numel() - length - 1, count).long()
    return torch.stack([data[s:s + length] for s in starts])


def as_text(ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def lm_loss(model, ids):
    """Per-sequence causal-LM loss (summed over tokens): grass needs per-sample losses."""
    logits = model(input_ids=ids).logits[:, :-1]
    return nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").sum(1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", default=None, help="a text file (default: Python's LICENSE.txt)")
    ap.add_argument("--prompt", default="The license ")
    ap.add_argument("--examples", type=int, default=512, help="training sequences")
    ap.add_argument("--length", type=int, default=48, help="characters per training sequence")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--generate", type=int, default=16, help="tokens to generate")
    ap.add_argument("--top", type=int, default=3, help="training sequences shown per token")
    ap.add_argument("--k", type=int, default=256, help="FactGraSS k per layer")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--run", default=None, help="run directory (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import transformers
    import grass
    from grass.score import TokenLogProbs

    torch.manual_seed(args.seed)
    path = args.text or default_text()
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    train = sequences(text, args.length, args.examples)
    print(f"training text: {os.path.basename(path)} ({len(text):,} characters), "
          f"{len(train)} sequences of {args.length}")

    cfg = transformers.GPT2Config(vocab_size=256, n_positions=max(args.length, len(args.prompt.encode())
                                                                   + args.generate),
                                  n_embd=args.width, n_layer=args.layers, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(args.steps):
        batch = train[torch.randint(0, len(train), (32,))]
        loss = lm_loss(model, batch).mean() / args.length
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
            print(f"  step {step:4d}  loss/token {loss.item():.3f}")
    model.eval()

    prompt = torch.tensor([list(args.prompt.encode())])
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=args.generate, do_sample=False,
                             pad_token_id=0, attention_mask=torch.ones_like(prompt))
    print(f"\nprompt {args.prompt!r} -> {as_text(out[0, prompt.shape[1]:])!r}\n")

    run = args.run or tempfile.mkdtemp(prefix="gpt2-attribution-")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attr = grass.Attributor(model, lm_loss, grass.compress.FactGraSS(k=args.k, seed=args.seed),
                                store=run, progress=False)
    print(attr.coverage_summary())
    loader = list(train.split(32))
    attr.cache(loader, num_examples=len(train))
    attr.fit()
    start = prompt.shape[1]
    target = TokenLogProbs(start)
    values, index = attr.top_k([out], args.top, target=target)   # one row per generated token
    for j in range(out.shape[1] - start):
        token = as_text(out[0, start + j:start + j + 1])
        context = as_text(out[0, max(0, start + j - 12):start + j])
        print(f"token {j:2d} {token!r} after {context!r}:")
        for v, i in zip(values[j], index[j]):
            print(f"    {v.item():+9.3f}  #{i.item():4d}  {as_text(train[i])!r}")
    return {"generated": out[0, start:], "values": values, "index": index, "attributor": attr,
            "train": train}


if __name__ == "__main__":
    main()
