"""A run directory treated as a hostile or careless user would leave it: planted pickles,
edited manifests, damaged data files and cache files. Each case gives a clear error naming
the file (`StoreDamaged`), or a recompute with a `CacheFileWarning`; never code run from
the directory, never a silently different score."""
import json
import os
import shutil
import subprocess
import sys
import warnings
import zlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import grass
from grass import Attributor
from grass.store import FingerprintMismatch, GradientStore, StoreDamaged, StoreWriter, rewind
from grass.store.files import CacheFileWarning
from grass.store.integrity import forget_verified, manifest_checksum

N, M, CHUNK, K_TOP = 64, 6, 16, 5
HERE = os.path.dirname(os.path.abspath(__file__))


def ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


def loaders():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(N + M, 6, generator=g), torch.randint(0, 3, (N + M,), generator=g)
    return (DataLoader(TensorDataset(x[:N], y[:N]), batch_size=16),
            DataLoader(TensorDataset(x[N:], y[N:]), batch_size=4))


SPEC = dict(k=12, seed=0, fit={"steps": 20, "eval_every": 5})


def attributor(run_dir) -> Attributor:
    """The run: learned masks (compressor.pt), a Fisher fit (fisher.pt, preconditioner.pt)."""
    return Attributor(model(), ce, compressor=grass.compress.SelectiveMask(**SPEC),
                      store=str(run_dir), chunk_rows=CHUNK, progress=False)


def results(attr, test):
    values, indices = attr.top_k(test, k=K_TOP)
    return {"scores": attr.scores(test), "values": values, "indices": indices,
            "self": attr.self_influence()}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A complete run directory and its results, computed once; tests damage copies."""
    run = tmp_path_factory.mktemp("pristine") / "run"
    train, test = loaders()
    attr = attributor(run)
    attr.fit_masks(train, test)
    attr.cache(train)
    attr.cache_test(test)
    attr.fit()
    return run, results(attr, test)


@pytest.fixture
def run(pristine, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(pristine[0], dst)
    return dst


def assert_same(got, want):
    for key in want:
        assert torch.equal(got[key], want[key]), key


# ---------------------------------------------------------------- planted pickles

class Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def plant(path, marker):
    torch.save({"store": "x", "block_sizes": [1], "state": Payload(marker),
                "fingerprint": Payload(marker), "content": Payload(marker)}, str(path))


def test_the_payload_runs_when_unpickled(tmp_path):
    """The planted files would run code if grass unpickled them (the tests below can fail)."""
    plant(tmp_path / "f.pt", tmp_path / "ran")
    torch.load(tmp_path / "f.pt", weights_only=False)
    assert (tmp_path / "ran").exists()


CHILD = r"""
import os, sys, warnings
sys.path.insert(0, sys.argv[1])
import torch
import test_hostile_store as T
run, marker, out = sys.argv[2:5]
train, test = T.loaders()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    attr = T.attributor(run)                          # reads compressor.pt
    assert attr.needs_fit, "a planted compressor.pt must not be taken for learned masks"
    attr.fit_masks(train, test)                       # the masks again, from the same seed
    res = T.results(attr, test)                       # reads preconditioner.pt and fisher.pt
    T.plant(os.path.join(run, "fisher.pt"), marker)
    fresh = T.attributor(run)
    fresh.fit()                                       # reads fisher.pt
    res["refit"] = fresh.scores(test)
torch.save({k: v for k, v in res.items()}, out)
for w in caught:
    print("WARNING", w.category.__name__, w.message)
"""


def test_planted_pickles_do_not_run_in_a_fresh_process(run, pristine, tmp_path):
    marker = tmp_path / "ran"
    for name in ("compressor.pt", "fisher.pt", "preconditioner.pt"):
        plant(run / name, marker)
    out = tmp_path / "out.pt"
    child = subprocess.run([sys.executable, "-c", CHILD, HERE, str(run), str(marker), str(out)],
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    assert not marker.exists(), "a pickle from the run directory ran"
    for name in ("compressor.pt", "fisher.pt", "preconditioner.pt"):
        assert f"CacheFileWarning {run / name}" in child.stdout, (name, child.stdout)
    assert "not unpickled" in child.stdout
    got = torch.load(out, weights_only=True)
    assert_same(got, pristine[1])
    assert torch.equal(got["refit"], pristine[1]["scores"])


# ---------------------------------------------------------------- damaged cache files

def _damage_file(path, how, tmp_path):
    raw = path.read_bytes()
    if how == "pickle":
        plant(path, tmp_path / "ran")
    elif how == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"not a torch file\n" * 10)
    elif how == "bitflip":
        # A bit of a tensor's payload: the file still loads, only the checksum can tell.
        saved = torch.load(path, weights_only=True)["content"]["state"]
        t = saved["sums"] if "sums" in saved else saved["factors"]
        at = raw.find(t.numpy().tobytes()[64:128])
        assert at > 0
        raw = bytearray(raw)
        raw[at + 5] ^= 0x04
        path.write_bytes(bytes(raw))
    else:
        raise AssertionError(how)


DAMAGES = ["pickle", "truncated", "empty", "garbage", "bitflip"]


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", ["fisher.pt", "preconditioner.pt"])
def test_unusable_cache_files_are_recomputed_with_a_warning(run, pristine, tmp_path, name, how):
    _damage_file(run / name, how, tmp_path)
    _, test = loaders()
    attr = attributor(run)
    with pytest.warns(CacheFileWarning, match=str(run / name).replace("\\", "\\\\")):
        if name == "fisher.pt":
            attr.fit()
        got = results(attr, test)
    assert_same(got, pristine[1])
    assert not (tmp_path / "ran").exists()
    # Recomputed and saved again: a later process reads it without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = attributor(run)
        if name == "fisher.pt":
            again.fit()
        assert torch.equal(again.scores(test), pristine[1]["scores"])


@pytest.mark.parametrize("how", ["pickle", "truncated", "garbage"])
def test_unusable_compressor_state_asks_for_fit_masks(run, pristine, tmp_path, how):
    _damage_file(run / "compressor.pt", how, tmp_path)
    train, test = loaders()
    with pytest.warns(CacheFileWarning, match="compressor.pt .*fit_masks"):
        attr = attributor(run)
    assert attr.needs_fit and not (tmp_path / "ran").exists()
    with pytest.raises(RuntimeError, match="fit_masks"):
        attr.cache(train)
    attr.fit_masks(train, test)
    assert_same(results(attr, test), pristine[1])


def test_lost_preconditioner_without_fit_record_asks_for_fit(run):
    (run / "fit.json").unlink()
    _damage_file(run / "preconditioner.pt", "truncated", None)
    _, test = loaders()
    with pytest.warns(CacheFileWarning, match="preconditioner.pt"):
        with pytest.raises(RuntimeError, match=r"call fit\(\)"):
            attributor(run).scores(test)


def test_edited_fit_record_is_not_used(run, pristine):
    rec = json.loads((run / "fit.json").read_text())
    rec["content"]["damping"][0] *= 2  # a different damping, checksum left as it was
    (run / "fit.json").write_text(json.dumps(rec))
    (run / "preconditioner.pt").unlink()
    _, test = loaders()
    with pytest.warns(CacheFileWarning, match="fit.json"):
        with pytest.raises(RuntimeError, match=r"call fit\(\)"):
            attributor(run).scores(test)


@pytest.mark.parametrize("how", ["pickle", "truncated"])
def test_unusable_trak_probabilities_are_recomputed(tmp_path, how):
    from grass import TRAK
    train, test = loaders()

    def trak():
        t = TRAK(model(), lambda m, b: (m(b[0]), b[1]), grass.compress.Identity(),
                 store=tmp_path / "trak", checkpoints=[None], progress=False)
        t.cache(train)
        return t.fit(damping=0.05).scores(test)

    want = trak()
    files = list((tmp_path / "trak").rglob("trak_probabilities.pt"))
    assert len(files) == 1
    _damage_file(files[0], how, tmp_path)
    with pytest.warns(CacheFileWarning, match="trak_probabilities.pt"):
        got = trak()
    assert torch.equal(got, want) and not (tmp_path / "ran").exists()


def test_preconditioner_left_by_an_interrupted_refit_is_not_used(run, pristine):
    """fit.json is written first: a preconditioner.pt whose damping differs from it is left
    from before a refit that did not finish, and is refitted, not used."""
    _, test = loaders()
    attr = attributor(run)
    attr.fit(damping=0.5)
    other = torch.load(run / "preconditioner.pt", weights_only=True)
    attr.fit()  # the damping of the pristine run
    torch.save(other, run / "preconditioner.pt")  # as if the last fit died before saving it
    with pytest.warns(CacheFileWarning, match="damping"):
        assert torch.equal(attributor(run).scores(test), pristine[1]["scores"])


# ---------------------------------------------------------------- edited manifests

def _edit_manifest(store_dir, key, value, *, rehash=False):
    path = store_dir / "manifest.json"
    m = json.loads(path.read_text())
    m[key] = value(m[key]) if callable(value) else value
    if rehash:  # a careful editor who also recomputes the manifest checksum
        m["manifest_checksum"] = manifest_checksum(m)
    path.write_text(json.dumps(m))


EDITS = {
    "format": lambda v: "something.else",
    "version": lambda v: "2",
    "fingerprint": lambda v: dict(v, model="0" * 32),
    "num_rows": lambda v: v - 1,
    "dim": lambda v: v + 1,
    "block_sizes": lambda v: [v[0] + 1, v[1] - 1],
    "layers": lambda v: v[:1],
    "dtype": lambda v: "float16",
    "byte_order": lambda v: "big",
    "data_file": lambda v: "other.bin",
    "chunk_rows": lambda v: v * 2,
    "committed_rows": lambda v: v - CHUNK,
    "checksum": lambda v: "crc32",
    "checksums": lambda v: v[:1] + ["0" * 16] + v[2:],
    "manifest_checksum": lambda v: "0" * 64,
    "meta": lambda v: dict(v, note="edited"),
}


def _outcome(run, test):
    """Scores of a fresh Attributor over the run, or the error it raises."""
    forget_verified()
    try:
        return results(attributor(run), test)
    except Exception as e:  # noqa: BLE001 - the test inspects what came
        return e


def _assert_refused_or_same(outcome, pristine, store_dir):
    if isinstance(outcome, Exception):
        assert isinstance(outcome, (StoreDamaged, ValueError)), repr(outcome)
        msg = str(outcome)
        assert str(store_dir) in msg, msg
        if isinstance(outcome, FingerprintMismatch):  # an edited fingerprint: another run
            assert "model" in outcome.fields, msg
        else:
            assert "is damaged: " in msg or "not a grass gradient store" in msg, msg
    else:
        assert_same(outcome, pristine[1])


@pytest.mark.parametrize("rehash", [False, True], ids=["edited", "edited+rehashed"])
@pytest.mark.parametrize("key", sorted(EDITS))
def test_every_manifest_field_edited(run, pristine, key, rehash):
    if rehash and key == "manifest_checksum":
        pytest.skip("the checksum itself")
    _, test = loaders()
    _edit_manifest(run / "train", key, EDITS[key], rehash=rehash)
    outcome = _outcome(run, test)
    if key == "meta":  # informative only: not covered by the checksum, changes nothing
        assert not isinstance(outcome, Exception), outcome
    if not rehash and key not in ("meta", "format", "version"):
        assert isinstance(outcome, StoreDamaged) and "manifest_checksum" in str(outcome), outcome
    _assert_refused_or_same(outcome, pristine, run / "train")


def test_rows_appended_with_a_consistent_manifest(run):
    """Rows added to the data file and to num_rows, with a recomputed manifest checksum:
    consistent on its own, but not the store the run's fingerprint describes."""
    with open(run / "train" / "gradients.bin", "ab") as f:
        f.write(torch.ones(CHUNK, 24).numpy().tobytes())
    _edit_manifest(run / "train", "num_rows", N + CHUNK, rehash=True)
    _, test = loaders()
    with pytest.raises(StoreDamaged, match=r"num_rows=80 but its fingerprint"):
        attributor(run).scores(test)


def test_manifest_that_is_not_json(run):
    (run / "train" / "manifest.json").write_bytes(b"\xff{ not json")
    with pytest.raises(StoreDamaged, match=r"store .*train.* is damaged: manifest.json is not valid JSON"):
        GradientStore(run / "train")


# ---------------------------------------------------------------- damaged data

ROW, ROW_BYTES = 37, 4 * 24  # row 37 is in chunk 2 (rows 32..48); K = 2 * 12


def _damage_data(store_dir, how):
    path = store_dir / "gradients.bin"
    raw = bytearray(path.read_bytes())
    assert len(raw) == N * ROW_BYTES
    row = slice(ROW * ROW_BYTES, (ROW + 1) * ROW_BYTES)
    if how == "truncated":
        del raw[-ROW_BYTES:]
    elif how == "truncated-1-byte":
        del raw[-1:]
    elif how == "extended":
        raw += bytes(ROW_BYTES)
    elif how == "bitflip":
        raw[ROW * ROW_BYTES + 6] ^= 0x01
    elif how == "scaled-x50":
        x = torch.frombuffer(bytearray(raw[row]), dtype=torch.float32) * 50
        raw[row] = x.numpy().tobytes()
    elif how == "0x7f-bytes":
        raw[row] = b"\x7f" * ROW_BYTES
    elif how == "nan-filled":
        raw[row] = torch.full((24,), float("nan")).numpy().tobytes()
    else:
        raise AssertionError(how)
    path.write_bytes(bytes(raw))


DATA_DAMAGES = ["truncated", "truncated-1-byte", "extended", "bitflip", "scaled-x50", "0x7f-bytes",
                "nan-filled"]


def _read_with(reader, run):
    train, test = loaders()
    attr = attributor(run)
    if reader == "fit":
        os.remove(run / "fisher.pt")
        return attr.fit()
    if reader == "datainf":
        return attr.fit(method="datainf").scores(test)
    if reader == "scores":
        return attr.scores(test)
    if reader == "top_k":
        return attr.top_k(test, k=K_TOP)
    if reader == "self_influence":
        return attr.self_influence()
    if reader == "chunks":
        return list(GradientStore(run / "train").chunks())
    if reader == "cached_test":
        return attr.scores(GradientStore(run / "test-test"))
    raise AssertionError(reader)


@pytest.mark.parametrize("reader", ["fit", "datainf", "scores", "top_k", "self_influence", "chunks"])
@pytest.mark.parametrize("how", DATA_DAMAGES)
def test_damaged_data_is_refused_by_every_reader(run, how, reader):
    _damage_data(run / "train", how)
    with pytest.raises(StoreDamaged) as e:
        _read_with(reader, run)
    msg = str(e.value)
    assert f"store {str(run / 'train')!r} is damaged" in msg
    if how.startswith("truncated") or how == "extended":
        assert "gradients.bin has" in msg and f"{N} rows x 24 x 4 bytes" in msg
    else:
        assert "chunk 2 (rows 32..48) of gradients.bin fails its checksum" in msg
        assert f"grass.store.rewind({str(run / 'train')!r}, 32)" in msg
    if how in ("nan-filled", "0x7f-bytes"):
        assert "rows [37] hold NaN or inf" in msg or how == "0x7f-bytes"


@pytest.mark.parametrize("method", ["TRAK", "TracIn"])
def test_damaged_data_is_refused_by_checkpoint_ensembles(tmp_path, method):
    from grass import TRAK, TracIn
    train, test = loaders()

    def build():
        if method == "TRAK":
            return TRAK(model(), lambda m, b: (m(b[0]), b[1]), grass.compress.Identity(),
                        store=tmp_path / "run", checkpoints=[None], progress=False)
        return TracIn(model(), ce, grass.compress.Identity(), store=tmp_path / "run",
                      checkpoints=[None], progress=False)

    first = build()
    first.cache(train)
    if method == "TRAK":
        first.fit(damping=0.05)
    first.scores(test)
    [data] = list((tmp_path / "run").rglob("train/gradients.bin"))
    _damage_data_at(data.parent, row=3)
    again = build()
    with pytest.raises(StoreDamaged, match=r"chunk 0 \(rows 0\.\.\d+\) of gradients.bin fails"):
        again.cache(train)
        if method == "TRAK":
            again.fit(damping=0.05)
        again.scores(test)


def test_damaged_cached_test_gradients_are_refused(run):
    _damage_data_at(run / "test-test", row=2)
    with pytest.raises(StoreDamaged, match=r"test-test.* is damaged: chunk 0 \(rows 0..6\)"):
        _read_with("cached_test", run)


def _damage_data_at(store_dir, row):
    path = store_dir / "gradients.bin"
    raw = bytearray(path.read_bytes())
    raw[row * ROW_BYTES + 1] ^= 0x80
    path.write_bytes(bytes(raw))


def test_rewind_recomputes_the_damaged_rows(run, pristine):
    """The remedy the error names works: rewind, cache again, the same scores."""
    _damage_data(run / "train", "scaled-x50")
    train, test = loaders()
    with pytest.raises(StoreDamaged, match=r"rewind\("):
        attributor(run).scores(test)
    assert rewind(run / "train", 32) == 32
    store = GradientStore(run / "train")
    assert store.committed_rows == 32 and not store.complete
    attr = attributor(run)
    attr.cache(train)
    assert_same(results(attr, test), pristine[1])


def test_each_chunk_is_verified_once_per_process(run, monkeypatch):
    import grass.store.store as S
    calls = []
    real = S.chunk_checksum
    monkeypatch.setattr(S, "chunk_checksum", lambda alg, buf: calls.append(len(buf)) or real(alg, buf))
    forget_verified()
    store = GradientStore(run / "train")
    for _ in range(3):
        list(store.chunks())
        list(store.chunks(chunk_rows=5))
        GradientStore(run / "train").gradients(3, 40)
    assert calls == [CHUNK] * (N // CHUNK)
    # A data file written since is verified again (its modification time changed).
    path = run / "train" / "gradients.bin"
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    store.gradients(0, 1)
    assert calls == [CHUNK] * (N // CHUNK + 1)


# ---------------------------------------------------------------- version 1 stores

def _as_version_1(store_dir):
    """Rewrite a store as grass wrote it before version 2: CRC-32 chunk checksums, no
    checksum algorithm field, no manifest checksum."""
    m = json.loads((store_dir / "manifest.json").read_text())
    raw = (store_dir / "gradients.bin").read_bytes()
    row_bytes = m["dim"] * 4
    m["checksums"] = [zlib.crc32(raw[j * m["chunk_rows"] * row_bytes:
                                     min((j + 1) * m["chunk_rows"], m["num_rows"]) * row_bytes])
                      for j in range(len(m["checksums"]))]
    for key in ("checksum", "manifest_checksum"):
        del m[key]
    m["version"] = 1
    (store_dir / "manifest.json").write_text(json.dumps(m))


def test_version_1_stores_are_read_and_verified(run, pristine):
    _as_version_1(run / "train")
    _, test = loaders()
    assert GradientStore(run / "train").checksum_algorithm == "crc32"
    assert_same(results(attributor(run), test), pristine[1])
    _damage_data(run / "train", "bitflip")
    forget_verified()
    with pytest.raises(StoreDamaged, match=r"chunk 2 \(rows 32..48\) of gradients.bin fails its checksum \(crc32"):
        attributor(run).scores(test)


def test_version_1_manifest_edits_are_caught_by_consistency(run, pristine):
    _as_version_1(run / "train")
    _, test = loaders()
    _edit_manifest(run / "train", "block_sizes", lambda v: [v[0] + 1, v[1] - 1])
    with pytest.raises(StoreDamaged, match=r"block_sizes=\[13, 11\] but its fingerprint"):
        attributor(run).scores(test)


def test_version_1_store_resumes_with_crc32(tmp_path):
    fp = {"run": 1}
    rows = torch.randn(10, 4)
    w = StoreWriter(tmp_path / "s", fingerprint=fp, num_rows=10, block_sizes=[4], chunk_rows=4)
    w.append(rows[:4])
    w.close()
    _as_version_1(tmp_path / "s")
    with StoreWriter(tmp_path / "s", fingerprint=fp, num_rows=10, block_sizes=[4]) as w:
        w.append(rows[4:])
    store = GradientStore(tmp_path / "s")
    assert store.manifest["version"] == 1 and store.checksum_algorithm == "crc32"
    store.verify()
    assert torch.equal(store.gradients(), rows)


def test_newer_store_versions_are_refused(tmp_path):
    with StoreWriter(tmp_path / "s", fingerprint={"a": 1}, num_rows=2, block_sizes=[3]) as w:
        w.append(torch.ones(2, 3))
    _edit_manifest(tmp_path / "s", "version", 3, rehash=True)
    with pytest.raises(ValueError, match="format version 3, newer than this grass reads .*upgrade grass"):
        GradientStore(tmp_path / "s")
