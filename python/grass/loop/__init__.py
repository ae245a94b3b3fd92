"""Capture from the user's training loop (docs/capture.md, "Capture from a training loop").

    cap = grass.loop.LoopCapture(model, grass.compress.FactGraSS(k=4096), store="runs/loop")
    with cap.window("step-100"), cap.step(ids):   # around the loop's own forward + backward
        ...
    cap.tracin(target_fn, test_loader, num_examples=N)

``LoopCapture`` (capture.py) records compressed per-sample gradients from the loop's own
backward into gradient stores; scores.py scores them (TracIn over windows, influence at
one window); hf.py is a Hugging Face ``TrainerCallback`` (needs transformers; imported on
its own: ``from grass.loop.hf import GradientCaptureCallback``). It sits above the
pipeline (it captures, writes stores and scores), beside the Attributor.
"""
from .capture import CapturedWindow, LoopCapture
from .scores import captured_influence, captured_tracin, window_target_gradients

__all__ = ["LoopCapture", "CapturedWindow", "captured_tracin", "captured_influence",
           "window_target_gradients"]
