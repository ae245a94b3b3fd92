"""Per-token targets: one call explains each token of a continuation (one test row per
token, one forward per batch), and equals explaining each token separately as a per-sequence
target; the train-norm normalisation."""
import warnings

import pytest
import torch
from torch import nn

import grass
from grass.score import TokenLogProbs


class CausalToy(nn.Module):
    """A tiny causal LM: each position sees the mean embedding of its prefix."""

    def __init__(self, vocab=13, d=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        e = self.emb(ids)
        prefix = e.cumsum(1) / torch.arange(1, ids.shape[1] + 1)[None, :, None]
        return self.head(self.ln(torch.tanh(self.mix(prefix)) + e))


def seq_loss(model, ids):
    logits = model(ids)[:, :-1]
    return nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").sum(1)


class OneToken:
    """The j-th token of TokenLogProbs as an ordinary per-sequence target [B]."""

    def __init__(self, start, j):
        self.inner, self.j = TokenLogProbs(start), j

    def __call__(self, model, ids):
        return self.inner(model, ids)[:, self.j]


@pytest.fixture
def fitted(gen, tmp_path):
    torch.manual_seed(0)
    model = CausalToy().eval()
    train = [torch.randint(0, 13, (6, 7), generator=gen) for _ in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attr = grass.Attributor(model, seq_loss, grass.compress.FactGraSS(k=16, seed=2),
                                store=str(tmp_path / "run"), progress=False)
    attr.cache(train, num_examples=18)
    attr.fit()
    return attr


def test_per_token_scores_equal_per_sequence_scores_of_each_token(fitted, gen):
    test = [torch.randint(0, 13, (3, 6), generator=gen), torch.randint(0, 13, (2, 6), generator=gen)]
    start = 2
    n = 6 - start
    got = fitted.scores(test, target=TokenLogProbs(start))
    assert got.shape == (5 * n, 18)
    for j in range(n):
        want = fitted.scores(test, target=OneToken(start, j))  # [5, 18]
        for b in range(5):
            assert torch.allclose(got[b * n + j], want[b], rtol=1e-5, atol=1e-6 * want.abs().max()), (b, j)
    values, index = fitted.top_k(test, 3, target=TokenLogProbs(start))
    assert torch.equal(index, got.topk(3, dim=1).indices)


def test_token_log_probs_value_and_padding(gen):
    model = CausalToy().eval()
    ids = torch.randint(0, 13, (2, 5), generator=gen)
    t = TokenLogProbs(2)(model, ids)
    logp = torch.log_softmax(model(ids), -1)
    assert torch.allclose(t[1, 2], logp[1, 3, ids[1, 4]])
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, 4] = 0
    masked = TokenLogProbs(2, logits=lambda m, i, a: m(i))(model, (ids, mask))
    assert masked[0, 2] == 0 and masked[1, 2] == t[1, 2]
    with pytest.raises(ValueError, match="start must be an int >= 1"):
        TokenLogProbs(0)
    with pytest.raises(ValueError, match=r"T > 5"):
        TokenLogProbs(5)(model, ids)


def test_scores_normalised_by_training_gradient_norm(fitted, gen):
    test = [torch.randint(0, 13, (4, 6), generator=gen)]
    raw = fitted.scores(test)
    norms = fitted.train_store().gradients().double().norm(dim=1)
    got = fitted.scores(test, normalize="train_norm")
    assert torch.allclose(got.double(), raw.double() / norms[None, :], rtol=1e-5)
    with pytest.raises(ValueError, match="normalize must be None or 'train_norm'"):
        fitted.scores(test, normalize="l2")
