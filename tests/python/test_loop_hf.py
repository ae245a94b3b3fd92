"""GradientCaptureCallback inside Hugging Face's Trainer (a 1-layer GPT-2, token-mean loss):
the captured rows equal caching the same weights afterwards, and training is unchanged."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import grass  # noqa: E402
from grass.capture import GradientCapture
from grass.loop import LoopCapture  # noqa: E402
from grass.loop.hf import GradientCaptureCallback  # noqa: E402

N, T, V, BATCH = 12, 8, 40, 4
STEPS = (1, 4)


class Data(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(0, V, (N, T), generator=g)

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"input_ids": self.tokens[i], "labels": self.tokens[i], "example_id": i}


def model():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=T, n_embd=16, n_layer=1, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def train(tmp, m, callbacks):
    """Two epochs of Trainer (shuffled batches); returns the model and every step's
    parameter gradients."""
    args = transformers.TrainingArguments(
        output_dir=str(tmp), per_device_train_batch_size=BATCH, num_train_epochs=2,
        learning_rate=1e-2, report_to=[], save_strategy="no", logging_strategy="no",
        remove_unused_columns=False, use_cpu=True, seed=3, data_seed=3,
        dataloader_num_workers=0, disable_tqdm=True)
    grads = []

    class Grads(transformers.TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).clone())
    trainer = transformers.Trainer(model=m, args=args, train_dataset=Data(),
                                   callbacks=[*callbacks, Grads()])
    trainer.train()
    return m, grads


def token_sum_ce(m, batch):
    """Per-sample loss: the sum of the sample's next-token losses."""
    ids = batch
    logits = m(input_ids=ids).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1),
                                           reduction="none")
    return ce.view(ids.shape[0], -1).sum(1)


def test_trainer_capture_matches_caching_afterwards(tmp_path):
    plain, plain_grads = train(tmp_path / "a", model(), [])
    m0 = model()
    blocks = [n for n, mod in m0.named_modules() if type(mod).__name__ == "Conv1D"]  # not the tied head
    cap = LoopCapture(m0, grass.compress.FactGraSS(k=32, seed=1), store=str(tmp_path / "cap"),
                      layers=blocks)
    m, grads = train(tmp_path / "b", m0, [GradientCaptureCallback(cap, steps=STEPS, scale="tokens")])
    # Training unchanged: every step's parameter gradients and the final weights, bitwise.
    assert len(grads) == len(plain_grads) == 2 * N // BATCH
    for a, b in zip(grads, plain_grads):
        assert torch.equal(a, b)
    for (n, p), (_, q) in zip(m.named_parameters(), plain.named_parameters()):
        assert torch.equal(p, q), n
    assert cap.windows() == [f"step-{s}" for s in STEPS]
    data = Data()
    for s in STEPS:
        w = cap.open(f"step-{s}")
        assert w.ids.numel() == BATCH
        ref_model = model()
        ref_model.load_state_dict(w.weights)
        ref_model.eval()
        got = GradientCapture(ref_model, token_sum_ce, layers=[i.name for i in cap.layers]) \
            .compressed(data.tokens[w.ids], cap.compressors)
        ref = torch.cat([got[i.name] for i in cap.layers], 1)
        # x (number of target tokens, 28) undoes the loss's token mean: float32, not bitwise.
        torch.testing.assert_close(w.store.gradients(), ref, rtol=1e-5,
                                   atol=1e-6 * float(ref.abs().max()))

