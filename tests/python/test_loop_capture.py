"""grass.loop.LoopCapture: gradients captured from an ordinary training loop (its own
forward, mean loss, backward and optimizer step) against caching the same checkpoints
afterwards, and the loop itself unchanged by the capture."""
import contextlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import grass
from grass.capture import GradientCapture
from grass.loop import LoopCapture

N, M, B, EPOCHS, LR = 64, 5, 8, 3, 0.1
STEP_WINDOWS = (2, 5, 11)          # single-step windows (TracIn's captured steps)
EPOCH_WINDOW = 2                   # a whole epoch (8 steps) as one window
SPEC = dict(k=24, seed=9)


def data():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(N + M, 10, generator=g), torch.randint(0, 4, (N + M,), generator=g)
    return TensorDataset(torch.arange(N), x[:N], y[:N]), (x[N:], y[N:])


def new_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4))


def ce(model, batch):  # per-sample losses, for caching afterwards
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


def train(model, capture=None, *, log_pass=False):
    """The user's loop: shuffled batches, mean loss, SGD with momentum. Returns the losses,
    and for every step the weights it started from and its batch."""
    train_set, _ = data()
    loader = DataLoader(train_set, batch_size=B, shuffle=True,
                        generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    losses, steps, step = [], [], 0
    for epoch in range(EPOCHS):
        epoch_window = (capture.window(f"epoch-{epoch}", rows=N, learning_rate=LR)
                        if capture is not None and epoch == EPOCH_WINDOW else contextlib.nullcontext())
        with epoch_window:
            for ids, x, y in loader:
                steps.append(({k: v.clone() for k, v in model.state_dict().items()}, (ids, x, y)))
                one = (capture.window(f"step-{step}", rows=len(ids), learning_rate=LR)
                       if capture is not None and step in STEP_WINDOWS else contextlib.nullcontext())
                with one, (capture.step(ids) if capture is not None else contextlib.nullcontext()):
                    loss = nn.functional.cross_entropy(model(x), y)
                    loss.backward()
                losses.append(loss.detach().clone())
                opt.step()
                opt.zero_grad()
                step += 1
    if log_pass:  # a pass over the data at the final weights: the loop without its updates
        with capture.window("final", rows=N):
            for ids, x, y in DataLoader(train_set, batch_size=B, shuffle=True,
                                        generator=torch.Generator().manual_seed(3)):
                with capture.step(ids):
                    nn.functional.cross_entropy(model(x), y).backward()
                opt.zero_grad()
    return losses, steps


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    plain_model = new_model()
    plain_losses, steps = train(plain_model)
    model = new_model()
    cap = LoopCapture(model, grass.compress.FactGraSS(**SPEC), store=str(tmp_path_factory.mktemp("loop")))
    losses, _ = train(model, cap, log_pass=True)
    return dict(plain_model=plain_model, plain_losses=plain_losses, steps=steps, model=model,
                losses=losses, cap=cap)


def after(state, batch, cap):
    """Caching afterwards: per-sample gradients of the batch at the given weights."""
    model = new_model()
    model.load_state_dict(state)
    model.eval()
    g = GradientCapture(model, ce).compressed(batch, cap.compressors)
    return torch.cat([g[i.name] for i in cap.layers], 1)


def test_loop_losses_and_updates_bitwise_unchanged(runs):
    assert len(runs["losses"]) == len(runs["plain_losses"]) == EPOCHS * N // B
    for a, b in zip(runs["losses"], runs["plain_losses"]):
        assert torch.equal(a, b)
    for (n, p), (_, q) in zip(runs["model"].named_parameters(), runs["plain_model"].named_parameters()):
        assert torch.equal(p, q), n


def test_captured_rows_equal_caching_afterwards(runs):
    cap, steps = runs["cap"], runs["steps"]
    assert cap.windows() == ["step-2", "step-5", "step-11", "epoch-2", "final"]  # in closing order
    for s in STEP_WINDOWS:
        w = cap.open(f"step-{s}")
        state, (ids, x, y) = steps[s]
        assert torch.equal(w.ids, ids)
        assert not w.info["weights_changed"]
        # B = 8, a power of two: undoing the batch mean is exact, so the rows are bitwise equal.
        assert torch.equal(w.store.gradients(), after(state, (x, y), cap))
    w = cap.open("epoch-2")
    assert w.info["weights_changed"] and w.store.num_rows == N
    assert sorted(w.ids.tolist()) == list(range(N))
    first = EPOCH_WINDOW * N // B
    expected = torch.cat([after(steps[s][0], steps[s][1][1:], cap) for s in range(first, first + N // B)])
    assert torch.equal(w.store.gradients(), expected)


def test_tracin_from_captured_steps(runs):
    cap, steps = runs["cap"], runs["steps"]
    _, (xt, yt) = data()
    test = [(xt, yt)]
    names = [f"step-{s}" for s in STEP_WINDOWS]
    got = cap.tracin(ce_target, test, num_examples=N, windows=names)
    # Reference: TracIn over the same steps from the weights each step started from.
    ref = torch.zeros(M, N, dtype=torch.float64)
    for s in STEP_WINDOWS:
        state, (ids, x, y) = steps[s]
        model = new_model()
        model.load_state_dict(state)
        gt = GradientCapture(model.eval(), ce_target).compressed((xt, yt), cap.compressors)
        gt = torch.cat([gt[i.name] for i in cap.layers], 1).double()
        ref[:, ids] += LR * (-gt) @ after(state, (x, y), cap).double().T
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    seen = torch.cat([steps[s][1][0] for s in STEP_WINDOWS])
    unseen = torch.ones(N, dtype=torch.bool)
    unseen[seen] = False
    assert torch.all(got[:, unseen] == 0) and torch.all(got[:, seen].abs() > 0)


def ce_target(model, batch):
    return -ce(model, batch)


def test_influence_at_final_checkpoint_from_capture(runs, tmp_path):
    cap, model = runs["cap"], runs["model"]
    _, (xt, yt) = data()
    got = cap.influence(ce_target, [(xt, yt)], num_examples=N, window="final")
    # Reference: the Attributor caching the final weights afterwards, in dataset order.
    train_set, _ = data()
    final = new_model()
    final.load_state_dict(model.state_dict())
    attr = grass.Attributor(final.eval(), lambda m, b: ce(m, b[1:]),
                            compressor=grass.compress.FactGraSS(**SPEC), store=str(tmp_path),
                            progress=False)
    attr.cache(DataLoader(train_set, batch_size=B))
    attr.fit()
    ref = attr.scores([(torch.zeros(M, dtype=torch.int64), xt, yt)])
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    assert torch.equal(got.topk(5, dim=1).indices, ref.topk(5, dim=1).indices)


def test_step_without_backward_is_an_error(tmp_path):
    model = new_model()
    cap = LoopCapture(model, grass.compress.FactGraSS(**SPEC), store=str(tmp_path))
    _, (xt, yt) = data()
    with pytest.raises(RuntimeError, match="call loss.backward\\(\\) inside"):
        with cap.window("w", rows=M):
            with cap.step(torch.arange(M)):
                nn.functional.cross_entropy(model(xt), yt)
    with pytest.raises(ValueError, match="opened for rows=6 but its steps captured 5"):
        with cap.window("w2", rows=6):
            with cap.step(torch.arange(M)):
                nn.functional.cross_entropy(model(xt), yt).backward()
