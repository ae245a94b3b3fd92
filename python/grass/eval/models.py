"""Small models for the evaluation: an MLP, a character-level transformer whose every
weight matrix is an ``nn.Linear`` (so LoGra and FactGraSS apply to all of them), and a
LoRA wrapper for attributing adapters only.

Models are described by a JSON-able spec (``{"kind": "mlp", ...}``) so that a cached
ground truth can record exactly which architecture produced it; ``build(spec, seed)``
makes one with deterministic initial weights.
"""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MLP", "CharTransformer", "LoRALinear", "add_lora", "lora_modules", "build",
           "mlp_spec", "transformer_spec"]


class MLP(nn.Module):
    """x [B, d_in] -> logits [B, classes]; ReLU between ``Linear`` layers."""

    def __init__(self, d_in: int, hidden: Sequence[int] = (128, 128), classes: int = 10):
        super().__init__()
        dims = [int(d_in), *map(int, hidden), int(classes)]
        layers: List[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class _Block(nn.Module):
    """Pre-norm causal self-attention and MLP; every projection is an ``nn.Linear``."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.ln1(x)

        def split(z):  # [B, T, d] -> [B, heads, T, d/heads]
            return z.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        att = F.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)),
                                             split(self.v(h)), is_causal=True)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, d))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class CharTransformer(nn.Module):
    """tokens int64 [B, T] -> next-token logits [B, T, vocab]."""

    def __init__(self, vocab: int, seq_len: int, d_model: int = 64, heads: int = 4,
                 layers: int = 2):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        x = self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update:
    ``y = base(x) + (alpha / rank) * B(A(x))`` with ``A: d_in -> rank`` and
    ``B: rank -> d_out`` (``B`` starts at zero, so the wrapped model starts unchanged).

    ``lora_A`` and ``lora_B`` are plain ``nn.Linear`` modules, so gradient capture treats
    them as linear layers (factored per-sample gradients) like any other.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = int(rank)
        self.scale = float(alpha) / float(rank)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_B(self.lora_A(x))

    def merged_weight(self) -> torch.Tensor:
        """The effective weight ``W + scale * B A`` [d_out, d_in]."""
        return self.base.weight + self.scale * self.lora_B.weight @ self.lora_A.weight


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0,
             targets: Optional[Iterable[str]] = None) -> nn.Module:
    """Replace ``nn.Linear`` modules of ``model`` (all, or those named in ``targets``) by
    ``LoRALinear`` wrappers, in place, and freeze every other parameter. Returns ``model``."""
    named = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    if targets is not None:
        targets = list(targets)
        names = {n for n, _ in named}
        missing = [t for t in targets if t not in names]
        if missing:
            raise ValueError(f"add_lora: targets {missing} are not nn.Linear modules of "
                             f"{type(model).__name__}; linear modules: {sorted(names)}")
        named = [(n, m) for n, m in named if n in targets]
    if not named:
        raise ValueError(f"add_lora: {type(model).__name__} has no nn.Linear module to adapt")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in named:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, rank, alpha))
    return model


def lora_modules(model: nn.Module) -> List[str]:
    """Names of every adapter matrix (``...lora_A``, ``...lora_B``), in module order: the
    ``layers=`` to attribute adapters only."""
    return [n for n, m in model.named_modules() if n.endswith(("lora_A", "lora_B"))
            and isinstance(m, nn.Linear)]


def mlp_spec(d_in: int, classes: int, hidden: Sequence[int] = (128, 128)) -> dict:
    return {"kind": "mlp", "d_in": int(d_in), "hidden": [int(h) for h in hidden],
            "classes": int(classes)}


def transformer_spec(vocab: int, seq_len: int, d_model: int = 64, heads: int = 4,
                     layers: int = 2) -> dict:
    return {"kind": "char_transformer", "vocab": int(vocab), "seq_len": int(seq_len),
            "d_model": int(d_model), "heads": int(heads), "layers": int(layers)}


def build(spec: dict, seed: int) -> nn.Module:
    """The model a spec describes, with initial weights drawn from ``seed`` (the global
    random state is left untouched)."""
    kind = spec.get("kind")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if kind == "mlp":
            return MLP(spec["d_in"], spec["hidden"], spec["classes"])
        if kind == "char_transformer":
            return CharTransformer(spec["vocab"], spec["seq_len"], spec["d_model"],
                                   spec["heads"], spec["layers"])
    raise ValueError(f"model spec kind must be 'mlp' or 'char_transformer', got {kind!r}")
