"""Caching a ResNet-style CNN with FactGraSS next to a plain training step, in one run.

    python bench/bench_cnn.py              # ~150k-parameter CNN, 32x32 inputs, B = 64
    python bench/bench_cnn.py --quick      # a tiny configuration (a smoke test)

The CNN (Conv2d + BatchNorm + a residual stage with a 1x1 shortcut + Linear, written
here) is attributed with the default layers=None: every trainable parameter, each module by
its fastest exact path (convolutions through unfolded patches, BatchNorm from its
normalised input, the head through factors). Per-sample means eval-mode BatchNorm
(running statistics), as is standard for attribution.

Each repetition runs, on the same batches and interleaved, (1) a plain training step per
batch: forward, mean loss, backward with parameter gradients, optimizer step (SGD), in
train mode and (2) the same in eval mode (BatchNorm on running statistics, as capture runs),
and (3) ``Attributor.cache`` of all batches with FactGraSS into a fresh store (store writes
included). The batch-invariance check ``cache`` runs once per run on its first batch is
timed on its own (a one-time cost: it is about as long as one batch's capture plus a
forward and backward per checked sample), so that the table shows the steady-state
throughput. Prints medians of examples/second and the ratios cache / training step.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

import torch
from torch import nn

try:
    import grass
except ImportError as exc:  # pragma: no cover - a message, not a test
    sys.exit(f"bench_cnn.py needs the grass package (pip install . from the repository root): {exc}")


class Block(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN plus the shortcut (1x1 conv + BN when the
    shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = None
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + (x if self.short is None else self.short(x)))


class ResNetish(nn.Module):
    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.layer1 = Block(width, width)
        self.layer2 = Block(width, 2 * width, stride=2)
        self.layer3 = Block(2 * width, 2 * width)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = self.layer3(self.layer2(self.layer1(h)))
        return self.fc(h.mean((2, 3)))


def loss_fn(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=256, help="FactGraSS k per layer")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--size", type=int, default=32, help="image side")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.k, args.batch, args.batches, args.size, args.width, args.reps = 16, 8, 2, 8, 4, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = ResNetish(args.width)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch, 3, args.size, args.size, generator=gen),
                torch.randint(0, 10, (args.batch,), generator=gen)) for _ in range(args.batches)]
    with torch.no_grad():  # running statistics from a few train-mode passes
        model.train()
        for x, _ in batches:
            model(x)
    n = args.batch * args.batches
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def train_step(mode: str):
        model.train(mode == "train")
        for b in batches:
            opt.zero_grad(set_to_none=True)
            loss_fn(model, b).mean().backward()
            opt.step()
        model.load_state_dict(state)  # the next run sees the same weights

    def cache():
        model.eval()
        run = tempfile.mkdtemp(prefix="bench-cnn-")
        try:
            attr = grass.Attributor(model, loss_fn, grass.compress.FactGraSS(k=args.k, seed=0),
                                    store=run, progress=False)
            attr.cache(batches, num_examples=n, check_batch=False)
        finally:
            shutil.rmtree(run, ignore_errors=True)
        return attr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.eval()
        attr = cache()  # warm-up and the coverage line
        train_step("train")
        train_step("eval")
        t0 = time.perf_counter()
        attr.capture.check_batch_invariance(batches[0])
        check_s = time.perf_counter() - t0
        times = {"train": [], "eval": [], "cache": []}
        for _ in range(args.reps):  # interleaved, so load changes hit all three alike
            for what, fn in (("train", lambda: train_step("train")), ("eval", lambda: train_step("eval")),
                             ("cache", cache)):
                t0 = time.perf_counter()
                fn()
                times[what].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios_train = statistics.median(t / c for t, c in zip(times["train"], times["cache"]))
    ratios_eval = statistics.median(t / c for t, c in zip(times["eval"], times["cache"]))
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"# bench_cnn.py: ResNet-style CNN, {params:,} trainable parameters, {args.batches} batches "
          f"of {args.batch} {args.size}x{args.size} images, FactGraSS k = {args.k} per layer "
          f"(K = {attr.dim}), torch threads {torch.get_num_threads()}, OMP_NUM_THREADS "
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, median of {args.reps} interleaved runs\n")
    print(f"{attr.coverage_summary()}\n")
    print("| run | examples/s | vs cache |")
    print("|---|---|---|")
    print(f"| training step, train mode (forward, backward, SGD step) | {n / med['train']:.0f} | "
          f"cache at {ratios_train:.2f}x |")
    print(f"| training step, eval mode | {n / med['eval']:.0f} | cache at {ratios_eval:.2f}x |")
    print(f"| Attributor.cache, FactGraSS | {n / med['cache']:.0f} | |")
    print(f"\nthe one-time batch-invariance check on the first batch: {check_s:.2f} s "
          f"({check_s / (med['cache'] / args.batches):.1f} batches of caching)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
