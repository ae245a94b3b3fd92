"""grass under torch.distributed: 2 ranks on gloo (torchrun) against one process.

One module-scoped run: a 2-rank caching run in which rank 1 SIGKILLs itself mid-cache,
then a relaunch that resumes, fits, scores, takes top-k and self-influence (both ranks
wrapped in DistributedDataParallel). The tests compare it with a single-process run of the
same Attributor calls, and score the 2-rank store from this (single) process.
"""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

import grass
import dist_worker as w

pytestmark = pytest.mark.skipif(
    not (hasattr(signal, "SIGKILL") and torch.distributed.is_available()
         and torch.distributed.is_gloo_available()),
    reason="needs POSIX signals and torch.distributed with gloo")

HERE = os.path.dirname(os.path.abspath(__file__))
KILL_AT = 4  # rank 1 dies on its 4th batch, after committing 3 (CHUNK == BATCH)


def _torchrun(*args, check=True, **env_extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(HERE, "dist_worker.py"), *map(str, args)]
    p = subprocess.run(cmd, env=env, cwd=HERE, capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"torchrun failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _parts(run_dir):
    layout = json.loads((run_dir / "train" / "shards.json").read_text())
    committed = []
    for sub in layout["shards"]:
        try:
            committed.append(json.loads((run_dir / "train" / sub / "manifest.json").read_text())
                             ["committed_rows"])
        except FileNotFoundError:
            committed.append(0)
    return layout, committed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    run_dir, out1, out2 = base / "run", base / "out1", base / "out2"
    out1.mkdir()
    out2.mkdir()
    crashed = _torchrun(run_dir, out1, 1, KILL_AT, check=False)
    assert crashed.returncode != 0, "the run with a killed rank should fail"
    layout, before = _parts(run_dir)
    _torchrun(run_dir, out2)
    seen = [json.loads((out2 / f"seen{r}.json").read_text()) for r in range(2)]
    ranks = [torch.load(out2 / f"rank{r}.pt", weights_only=False) for r in range(2)]

    # The same calls in one process (one thread, as torchrun's workers).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, train, test = w.problem()
        ref = w.attributor(model, str(base / "ref"))
        ref.cache(DataLoader(train, batch_size=w.BATCH), check_batch=False)
        ref.fit()
        loader = DataLoader(test, batch_size=4)
        single = {"scores": ref.scores(loader), "top": ref.top_k(loader, k=w.TOPK),
                  "harmful": ref.top_k(loader, k=w.TOPK, largest=False),
                  "self_influence": ref.self_influence(), "fisher": ref.fisher.sums,
                  "store": ref.train_store().gradients().clone()}
        # The 2-rank store, read and scored by this one process (its Fisher recomputed).
        for name in ("fisher.pt", "preconditioner.pt"):
            os.remove(run_dir / name)
        model2, _, _ = w.problem()
        one = w.attributor(model2, str(run_dir))
        one.fit()
        from_parts = {"scores": one.scores(loader), "top": one.top_k(loader, k=w.TOPK),
                      "self_influence": one.self_influence(),
                      "store": one.train_store().gradients().clone(), "kind": type(one.train_store())}
    finally:
        torch.set_num_threads(threads)
    return dict(layout=layout, before=before, seen=seen, ranks=ranks, single=single,
                from_parts=from_parts, base=base)


def test_killed_rank_resumes_without_recomputing_committed_chunks(runs):
    layout, before = runs["layout"], runs["before"]
    assert layout["world_size"] == 2 and layout["ranges"] == [[0, 48], [48, 96]]
    assert before[1] == (KILL_AT - 1) * w.BATCH  # rank 1 committed 3 batches before dying
    for r, ((lo, hi), done) in enumerate(zip(layout["ranges"], before)):
        # the relaunch computed exactly the rows that were not committed, nothing more
        assert runs["seen"][r]["examples"] == (hi - lo) - done, (r, runs["seen"][r], done)


def test_two_ranks_give_single_process_scores(runs):
    single = runs["single"]
    # Per-sample gradients: each rank computes the same batches as one process.
    assert torch.equal(runs["from_parts"]["store"], single["store"])
    for res in runs["ranks"]:
        # The Fisher is all-reduced: float64 sums added in another order.
        torch.testing.assert_close(res["fisher"], single["fisher"], rtol=1e-12, atol=1e-12)
        assert res["fisher_rows"] == w.N
        # Scores: float32 within 1e-5 relative of the largest score.
        scale = single["scores"].abs().max()
        torch.testing.assert_close(res["scores"], single["scores"], rtol=1e-5, atol=1e-5 * scale)
        assert torch.equal(res["indices"], single["top"][1])
        torch.testing.assert_close(res["values"], single["top"][0], rtol=1e-5, atol=1e-5 * scale)
        assert torch.equal(res["harmful"][1], single["harmful"][1])
        torch.testing.assert_close(res["self_influence"], single["self_influence"], rtol=1e-9, atol=0)
    # Both ranks hold the same merged results.
    a, b = runs["ranks"]
    for key in ("scores", "values", "indices", "self_influence"):
        assert torch.equal(a[key], b[key])


def test_two_rank_store_scored_by_one_process_is_identical(runs):
    parts, single = runs["from_parts"], runs["single"]
    assert parts["kind"] is grass.distributed.ShardedStore
    assert torch.equal(parts["scores"], single["scores"])
    assert torch.equal(parts["top"][0], single["top"][0])
    assert torch.equal(parts["top"][1], single["top"][1])
    assert torch.equal(parts["self_influence"], single["self_influence"])


def test_fsdp2_sharded_model_gives_single_process_scores(runs):
    """FSDP2 (fully_shard on CPU with gloo): the layers' forward hooks see the unsharded
    weights, the fingerprint hashes the full weights, so scores match one process."""
    pytest.importorskip("torch.distributed.fsdp")
    base = runs["base"]
    out = base / "out_fsdp"
    out.mkdir()
    _torchrun(base / "run_fsdp", out, GRASS_TEST_WRAP="fsdp")
    single = runs["single"]
    scale = single["scores"].abs().max()
    for r in range(2):
        res = torch.load(out / f"rank{r}.pt", weights_only=False)
        torch.testing.assert_close(res["scores"], single["scores"], rtol=1e-5, atol=1e-5 * scale)
        assert torch.equal(res["indices"], single["top"][1])
    # the store it wrote is the one-process store, row for row
    one = grass.distributed.open_store(str(base / "run_fsdp" / "train"))
    assert torch.equal(one.gradients(), single["store"])
