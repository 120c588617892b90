"""Label-free fidelity of a compressed model to its original (for searches without labels).

``similarity = 0.5 x top-1 agreement + 0.5 x mean max(0, cosine(logits_candidate, logits_original))``

Both terms are in [0, 1] and equal 1 for an identical model.  Agreement tracks accuracy
closely when the original is accurate; the cosine term separates candidates that agree on the
top class but drift in their logits (the logit-distance signal LFGCL-style methods use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import nn


def logit_similarity(candidate_logits: np.ndarray, original_logits: np.ndarray) -> float:
    """Similarity in [0, 1] of two (N, K) logit arrays (see the module docstring)."""
    a = np.asarray(candidate_logits, dtype=np.float64)
    b = np.asarray(original_logits, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] == 0:
        from hwcompress.errors import ModelError

        raise ModelError(f"logits of shapes {a.shape} and {b.shape} cannot be compared; expected equal (N, K), N > 0")
    agree = float(np.mean(a.argmax(1) == b.argmax(1)))
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norm > 0, np.sum(a * b, axis=1) / np.maximum(norm, 1e-30), 0.0)
    cos_term = float(np.mean(np.clip(cos, 0.0, 1.0)))
    return float(min(1.0, max(0.0, 0.5 * agree + 0.5 * cos_term)))


def similarity(
    candidate: nn.Module,
    original: nn.Module,
    x: np.ndarray,
    batch_size: int = 500,
    *,
    original_logits: np.ndarray | None = None,
) -> float:
    """Similarity in [0, 1] of ``candidate`` to ``original`` on unlabelled images ``x`` (N, C, H, W).

    ``original_logits``: the original's logits on ``x`` when already computed (a search calls
    this for many candidates against one original).
    """
    from hwcompress.evaluate import predict_logits

    ref = original_logits if original_logits is not None else predict_logits(original, x, batch_size)
    return logit_similarity(predict_logits(candidate, x, batch_size), ref)
