"""Evaluation of attributions: datasets, models, training, the LDS ground truth, mislabel
detection, counterfactual removal, plots, the paper's tables and ``grass demo``.

Needs the ``eval`` extra (``pip install 'grass[eval]'``: scikit-learn, mlxtend,
matplotlib, scipy). Submodules are imported on use, so ``import grass.eval`` is cheap.
"""
