"""One rank of the distributed tests (test_distributed.py), launched with torchrun.

    torchrun --standalone --nproc_per_node=2 dist_worker.py RUN_DIR OUT_DIR [KILL_RANK KILL_AT]

Caches the training set of `problem()` with the Attributor under a gloo process group
(the model wrapped in DistributedDataParallel, or sharded by FSDP2), then fits, scores, takes top-k and
self-influence, and saves what it got as OUT_DIR/rank<r>.pt. With KILL_RANK/KILL_AT the
given rank SIGKILLs itself when its loss function is called for the KILL_AT-th time
(mid-cache). With GRASS_TEST_WRAP=fsdp the model is sharded with FSDP2 (fully_shard)
instead of wrapped in DDP. Every rank records how many training examples its loss function saw.
"""
import json
import os
import signal
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import grass

N, M, BATCH, CHUNK, TOPK = 96, 6, 8, 8, 5
_SEEN = [0, 0]  # [loss calls, training examples] of this process
_KILL = [None, None]


def problem():
    """(model, train set, test set): a small MLP with fixed random weights."""
    g = torch.Generator().manual_seed(11)
    x, y = torch.randn(N + M, 10, generator=g), torch.randint(0, 4, (N + M,), generator=g)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4)).eval()
    return model, TensorDataset(x[:N], y[:N]), TensorDataset(x[N:], y[N:])


def ce(model, batch):
    x, y = batch
    _SEEN[0] += 1
    _SEEN[1] += int(x.shape[0])
    if _KILL[0] is not None and _SEEN[0] == _KILL[0]:
        os.kill(os.getpid(), signal.SIGKILL)
    return nn.functional.cross_entropy(model(x), y, reduction="none")


def attributor(model, run_dir):
    return grass.Attributor(model, ce, compressor=grass.compress.FactGraSS(k=24, seed=5),
                            store=run_dir, chunk_rows=CHUNK, progress=False)


def main():
    run_dir, out_dir = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    r = dist.get_rank()
    if len(sys.argv) > 3 and int(sys.argv[3]) == r:
        _KILL[0] = int(sys.argv[4])
    model, train, test = problem()
    if os.environ.get("GRASS_TEST_WRAP") == "fsdp":  # FSDP2: each linear layer sharded
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in (model[0], model[2], model):
            fully_shard(layer, mesh=mesh)
        wrapped = model
    else:
        wrapped = nn.parallel.DistributedDataParallel(model)
    attr = attributor(wrapped, run_dir)
    attr.cache(DataLoader(train, batch_size=BATCH), check_batch=False)
    with open(os.path.join(out_dir, f"seen{r}.json"), "w") as f:
        json.dump({"calls": _SEEN[0], "examples": _SEEN[1]}, f)
    attr.fit()
    test_loader = DataLoader(test, batch_size=4)
    scores = attr.scores(test_loader)
    values, indices = attr.top_k(test_loader, k=TOPK)
    harmful = attr.top_k(test_loader, k=TOPK, largest=False)
    torch.save({"scores": scores, "values": values, "indices": indices, "harmful": harmful,
                "self_influence": attr.self_influence(), "fisher": attr.fisher.sums,
                "fisher_rows": attr.fisher.num_rows, "layers": [i.name for i in attr.layers]},
               os.path.join(out_dir, f"rank{r}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    # Run the module's own copy (not __main__'s), so its loss function is named as it is
    # when the tests import this module: the store fingerprints the function by name.
    import dist_worker
    dist_worker.main()
