"""grass under ``torch.distributed`` (launched with ``torchrun``): see docs/distributed.md.

With a process group initialised, the ordinary `grass.Attributor` calls shard their work
by rank: ``cache`` writes one part of the store per rank (each resumable on its own),
``fit`` all-reduces the per-layer Fisher, ``scores`` / ``top_k`` / ``self_influence``
score each rank's share of the training rows and merge. A store written by N ranks is
read by M ranks or by one process (`open_store`).
"""
from .group import active, all_gather_rows, all_reduce_sum, rank, row_range, unwrap_model, world_size
from .sharded_store import ShardedStore, is_sharded, open_store
from .score import accumulate_fisher, full_scores, merge_top_k, self_influence, top_k_scores

__all__ = ["active", "rank", "world_size", "row_range", "all_reduce_sum", "all_gather_rows",
           "unwrap_model", "ShardedStore", "open_store", "is_sharded", "accumulate_fisher",
           "full_scores", "top_k_scores", "self_influence", "merge_top_k"]
