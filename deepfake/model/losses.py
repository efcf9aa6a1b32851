"""Training losses: the classification loss of any head, and the supervised contrastive term of RINE's recipe."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over two logits; binary cross-entropy with logits for a one-logit head (RINE's, UFD's probe)."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype))
    return F.cross_entropy(logits, target)


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Khosla et al.'s SupCon loss, one view per sample: pull same-label embeddings together.

    Anchors without another sample of their label in the batch are left out; a batch with no
    such pair gives 0 (with a gradient path, so it can be added to any loss).
    """
    z = F.normalize(embeddings.float(), dim=1)
    n = len(z)
    logits = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    # Leave each sample out of its own softmax.
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(dim=1)
    anchors = counts > 0
    if not anchors.any():
        return embeddings.sum() * 0.0
    mean_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)[anchors] / counts[anchors]
    return -mean_log_prob.mean()
