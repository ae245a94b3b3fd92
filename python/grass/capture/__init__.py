"""Per-sample gradient capture: which layers, and their per-sample gradients or factors.

    cap = grass.capture.GradientCapture(model, loss_fn, layers=None, include_flat=False)
    cap.compressed(batch, compressors)   # {layer: [B, k_l]}
    cap.per_sample(batch)                # {layer: [B, numel_l]}, explicit (torch.func)

See docs/capture.md.
"""
from .capture import BatchDependenceError, GradientCapture
from .select import discover_layers, is_linear, linear_dims

__all__ = ["GradientCapture", "BatchDependenceError", "discover_layers", "is_linear", "linear_dims"]
