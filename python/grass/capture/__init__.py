"""Per-sample gradient capture: which layers, and their per-sample gradients or factors.

    cap = grass.capture.GradientCapture(model, loss_fn, layers=None, include_flat=False)
    cap.compressed(batch, compressors)   # {layer: [B, k_l]}
    cap.per_sample(batch)                # {layer: [B, numel_l]}, explicit (torch.func)

See docs/capture.md.
"""
from .capture import BatchDependenceError, GradientCapture
from .select import coverage, discover_layers, is_conv, is_linear, linear_dims, path_of

__all__ = ["GradientCapture", "BatchDependenceError", "discover_layers", "coverage", "is_linear",
           "is_conv", "linear_dims", "path_of"]
