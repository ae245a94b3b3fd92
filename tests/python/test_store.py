"""Gradient store: round trips in every dtype, commits, resume, fingerprints, bad input."""
import json

import numpy as np
import pytest
import torch

from grass.store import (FingerprintMismatch, GradientStore, StoreWriter, fill_store,
                         hash_batch, hash_callable, hash_module)

FP = {"model": "abc", "compressor": {"method": "sjlt", "k": 8, "seed": 0}, "dtype": "float32"}


def _rows(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g)


def _write(path, G, *, dtype="float32", chunk_rows=16, step=7, fingerprint=FP, blocks=(5, 7)):
    with StoreWriter(path, fingerprint=fingerprint, num_rows=G.shape[0], block_sizes=blocks,
                     dtype=dtype, chunk_rows=chunk_rows, layers=["a", "b"]) as w:
        for i in range(0, G.shape[0], step):
            w.append(G[i:i + step])
    return GradientStore(path, fingerprint=fingerprint)


@pytest.mark.parametrize("dtype,tdtype", [("float32", torch.float32), ("float16", torch.float16),
                                          ("bfloat16", torch.bfloat16)])
def test_round_trip_every_dtype(tmp_path, dtype, tdtype):
    G = _rows(100, 12)
    store = _write(tmp_path / "s", G, dtype=dtype)
    assert store.complete and store.num_rows == 100 and store.dim == 12
    assert store.block_sizes == [5, 7] and store.layers == ["a", "b"]
    got = store.gradients()
    assert got.dtype == tdtype and got.shape == (100, 12)
    # Bitwise equal to torch's own cast of the rows.
    assert torch.equal(got, G.to(tdtype))
    # The file is raw little-endian rows, readable without grass.
    raw = np.fromfile(tmp_path / "s" / "gradients.bin", dtype={"float32": "<f4", "float16": "<f2",
                                                                 "bfloat16": "<u2"}[dtype])
    expect = G.to(tdtype)
    expect = expect.view(torch.int16).numpy().view("<u2") if dtype == "bfloat16" else expect.numpy()
    np.testing.assert_array_equal(raw.reshape(100, 12), expect)
    # Chunks in float32 cover every row once, in order.
    parts = list(store.chunks(30))
    assert [s for s, _ in parts] == [0, 30, 60, 90]
    assert torch.equal(torch.cat([c for _, c in parts]), G.to(tdtype).float())
    store.verify()


def test_memory_map_is_copy_on_write(tmp_path):
    G = _rows(20, 12)
    store = _write(tmp_path / "s", G)
    view = store.gradients()
    view.zero_()
    assert torch.equal(GradientStore(tmp_path / "s").gradients(), G)


def test_uncommitted_rows_are_never_read_and_resume_overwrites_them(tmp_path):
    G = _rows(64, 12)
    path = tmp_path / "s"
    w = StoreWriter(path, fingerprint=FP, num_rows=64, block_sizes=[5, 7], chunk_rows=16)
    w.append(G[:16])          # a full chunk: committed
    w.append(G[16:24] + 100)  # written, not committed (as if the process died now)
    assert GradientStore(path).committed_rows == 16
    assert GradientStore(path).gradients().shape == (16, 12)
    w.__del__()  # the process "dies": no commit, the lock is released
    del w
    # Resume: appends start after the committed rows and overwrite the garbage.
    with StoreWriter(path, fingerprint=FP, num_rows=64, block_sizes=[5, 7], chunk_rows=16) as w2:
        assert w2.committed_rows == 16
        w2.append(G[16:])
    store = GradientStore(path)
    assert store.complete and torch.equal(store.gradients(), G)
    store.verify()


def test_exception_inside_with_block_commits_written_rows(tmp_path):
    G = _rows(64, 12)
    path = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(path, fingerprint=FP, num_rows=64, block_sizes=[5, 7], chunk_rows=32) as w:
            w.append(G[:10])
            raise KeyboardInterrupt
    assert GradientStore(path).committed_rows == 10


def test_fill_store_resumes_bitwise(tmp_path):
    G = _rows(90, 12)
    batches = [(G[i:i + 8], torch.arange(i, min(i + 8, 90))) for i in range(0, 90, 8)]
    calls = []

    def compute(batch):
        calls.append(int(batch[1][0]))
        return batch[0] * 2.0

    full = tmp_path / "full"
    with StoreWriter(full, fingerprint=FP, num_rows=90, block_sizes=[5, 7], chunk_rows=16) as w:
        assert fill_store(w, batches, compute, progress=False) == 90

    part = tmp_path / "part"

    def failing(batch):
        if int(batch[1][0]) >= 40:
            raise RuntimeError("boom")
        return compute(batch)

    with pytest.raises(RuntimeError, match="boom"):
        with StoreWriter(part, fingerprint=FP, num_rows=90, block_sizes=[5, 7], chunk_rows=16) as w:
            fill_store(w, batches, failing, progress=False)
    assert GradientStore(part).committed_rows == 40  # written rows committed on the way out
    calls.clear()
    with StoreWriter(part, fingerprint=FP, num_rows=90, block_sizes=[5, 7], chunk_rows=16) as w:
        assert fill_store(w, batches, compute, progress=False) == 50
    assert calls == list(range(40, 90, 8))  # committed batches were not recomputed
    a = (full / "gradients.bin").read_bytes()
    b = (part / "gradients.bin").read_bytes()
    assert a == b
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (full, part))
    ma.pop("meta"), mb.pop("meta")
    assert ma == mb


def test_fill_store_straddling_batch_writes_only_new_rows(tmp_path):
    G = _rows(30, 12)
    path = tmp_path / "s"
    with StoreWriter(path, fingerprint=FP, num_rows=30, block_sizes=[5, 7], chunk_rows=100) as w:
        w.append(G[:13])
    batches = [G[i:i + 10] for i in range(0, 30, 10)]
    with StoreWriter(path, fingerprint=FP, num_rows=30, block_sizes=[5, 7]) as w:
        assert fill_store(w, batches, lambda b: b, progress=False) == 17
    assert torch.equal(GradientStore(path).gradients(), G)


def test_fill_store_checks_the_number_of_examples(tmp_path):
    G = _rows(30, 12)
    with StoreWriter(tmp_path / "s", fingerprint=FP, num_rows=31, block_sizes=[5, 7]) as w:
        with pytest.raises(ValueError, match="held 30 examples but the store expects 31"):
            fill_store(w, [G], lambda b: b, progress=False)
    with StoreWriter(tmp_path / "t", fingerprint=FP, num_rows=29, block_sizes=[5, 7]) as w:
        with pytest.raises(ValueError, match="exceed"):
            fill_store(w, [G], lambda b: b, progress=False)
    assert GradientStore(tmp_path / "t").committed_rows == 0


def test_fingerprint_mismatch_names_the_fields(tmp_path):
    _write(tmp_path / "s", _rows(20, 12))
    other = dict(FP, model="xyz", compressor={"method": "sjlt", "k": 8, "seed": 1})
    with pytest.raises(FingerprintMismatch) as e:
        StoreWriter(tmp_path / "s", fingerprint=other, num_rows=20, block_sizes=[5, 7])
    assert e.value.fields == ("compressor", "model")
    assert "compressor" in str(e.value) and "model" in str(e.value)
    with pytest.raises(FingerprintMismatch, match="dtype"):
        GradientStore(tmp_path / "s", fingerprint=dict(FP, dtype="float16"))
    # The mismatch left the store untouched.
    assert torch.equal(GradientStore(tmp_path / "s").gradients(), _rows(20, 12))


def test_layout_changes_are_refused(tmp_path):
    _write(tmp_path / "s", _rows(20, 12))
    with pytest.raises(ValueError, match="num_rows"):
        StoreWriter(tmp_path / "s", fingerprint=FP, num_rows=21, block_sizes=[5, 7])
    with pytest.raises(ValueError, match="dtype"):
        StoreWriter(tmp_path / "s", fingerprint=FP, num_rows=20, block_sizes=[5, 7], dtype="bfloat16")


def test_bad_rows_raise_and_store_nothing(tmp_path):
    w = StoreWriter(tmp_path / "s", fingerprint=FP, num_rows=20, block_sizes=[5, 7], chunk_rows=4)
    bad = _rows(4, 12)
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[2\] hold NaN"):
        w.append(bad)
    with pytest.raises(ValueError, match=r"\[b, K=12\]"):
        w.append(_rows(4, 11))
    with pytest.raises(ValueError, match="floating point"):
        w.append(torch.ones(4, 12, dtype=torch.int64))
    w.close()
    assert GradientStore(tmp_path / "s").committed_rows == 0
    w16 = StoreWriter(tmp_path / "h", fingerprint=FP, num_rows=20, block_sizes=[5, 7], dtype="float16")
    with pytest.raises(ValueError, match="overflow float16"):
        w16.append(torch.full((2, 12), 1e6))
    w16.close()


def test_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        StoreWriter(tmp_path / "a", fingerprint=FP, num_rows=2, block_sizes=[2], dtype="int8")
    with pytest.raises(ValueError, match="block_sizes"):
        StoreWriter(tmp_path / "b", fingerprint=FP, num_rows=2, block_sizes=[2, 0])
    with pytest.raises(ValueError, match="num_rows"):
        StoreWriter(tmp_path / "c", fingerprint=FP, num_rows=0, block_sizes=[2])
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        GradientStore(tmp_path / "nothing")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no gradient store"):
        StoreWriter(foreign, fingerprint=FP, num_rows=2, block_sizes=[2])
    assert (foreign / "notes.txt").read_text() == "mine"


def test_one_writer_at_a_time(tmp_path):
    w = StoreWriter(tmp_path / "s", fingerprint=FP, num_rows=20, block_sizes=[5, 7])
    with pytest.raises(RuntimeError, match="another process is writing"):
        StoreWriter(tmp_path / "s", fingerprint=FP, num_rows=20, block_sizes=[5, 7])
    w.close()
    StoreWriter(tmp_path / "s", fingerprint=FP, num_rows=20, block_sizes=[5, 7]).close()


def test_verify_detects_damage(tmp_path):
    _write(tmp_path / "s", _rows(40, 12))
    data = tmp_path / "s" / "gradients.bin"
    raw = bytearray(data.read_bytes())
    raw[12 * 4 * 20 + 3] ^= 0x10  # flip one bit in row 20 (chunk 1)
    data.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="chunk 1 .* fails its checksum"):
        GradientStore(tmp_path / "s").verify()


def test_incomplete_store_is_refused_for_scoring(tmp_path):
    w = StoreWriter(tmp_path / "s", fingerprint=FP, num_rows=20, block_sizes=[5, 7])
    w.append(_rows(5, 12))
    w.close()
    store = GradientStore(tmp_path / "s")
    with pytest.raises(RuntimeError, match="5 of 20 rows committed"):
        store.require_complete()


def test_hashes_see_every_bit():
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    h = hash_module(m)
    with torch.no_grad():
        w = m[0].weight.view(-1)
        w[1] = torch.nextafter(w[1], torch.tensor(1.0))
    assert hash_module(m) != h
    h = hash_module(m)
    m[1].running_mean += 1e-3  # buffers count
    assert hash_module(m) != h
    assert hash_batch((torch.ones(2), 3)) != hash_batch((torch.ones(2), 4))
    assert hash_batch(torch.ones(2, dtype=torch.float32)) != hash_batch(torch.ones(2, dtype=torch.float64))

    def loss_a(model, batch):
        return model(batch).sum(1)

    def loss_b(model, batch):
        return model(batch).mean(1)

    assert hash_callable(loss_a) != hash_callable(loss_b)
    assert hash_callable(loss_a) == hash_callable(loss_a)
