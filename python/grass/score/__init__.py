"""Scoring: influence (chunked full matrix, top-k, self-influence), TRAK's terms, and
baselines, over gradient stores. The checkpoint ensembles that compose them with the
Attributor are ``grass.TRAK`` and ``grass.TracIn`` (grass/ensemble.py).

Sign convention (docs/pipeline.md, docs/scoring.md): τ(test, i) = −∇fᵀ (F + λI)⁻¹ ∇ℓ_i,
positive = training example i helps the target f (default f = −loss).
"""
from . import baselines
from .influence import influence_queries, influence_scores, influence_top_k, self_influence
from .stream import RowSource, ScoreTerm, TopK, full_scores, score_chunks, top_k_scores
from .targets import NegativeLoss, TokenLogProbs, resolve_target
from .trak import MarginTarget, classification_margin, correct_class_probability, trak_terms

__all__ = [
    "influence_queries", "influence_scores", "influence_top_k", "self_influence",
    "ScoreTerm", "RowSource", "TopK", "score_chunks", "full_scores", "top_k_scores",
    "NegativeLoss", "TokenLogProbs", "resolve_target",
    "MarginTarget", "classification_margin", "correct_class_probability", "trak_terms",
    "baselines",
]
