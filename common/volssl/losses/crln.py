"""CRLN's losses (arXiv 2502.11456): supervised Dice+CE on the logits and the rectification map, the
confidence-weighted pseudo-label CE, and CPS (Collaborative Positive Supervision), a regional contrast loss.

Shapes: batch ``B``, ``n`` classes, spatial ``*S`` (3 axes), embedding dimension ``E``. Label maps may be given as
(B, 1, *S) or (B, *S); they hold class indices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

__all__ = ["CRLNSupervisedLoss", "ConfidenceWeightedCELoss", "CPSLoss", "as_label_map"]


def as_label_map(target: torch.Tensor, spatial_dims: int = 3) -> torch.Tensor:
    """Class-index map (B, *S) as ``long`` from (B, 1, *S) or (B, *S).

    Raises:
        ValueError: any other shape.
    """
    if target.dim() == spatial_dims + 2:
        if target.shape[1] != 1:
            raise ValueError(f"a label map with a channel axis must have 1 channel, got shape {list(target.shape)}.")
        target = target[:, 0]
    elif target.dim() != spatial_dims + 1:
        raise ValueError(
            f"expected a label map (B, 1, *S) or (B, *S) with {spatial_dims} spatial axes, got {list(target.shape)}."
        )
    return target.long()


class CRLNSupervisedLoss(nn.Module):
    """Supervised loss of CRLN on the labelled batch::

        L_sup = w [CE(y, g) + Dice(y, g)]  +  w [CE(M, g) + Dice(M, g)]        (w = 0.5)

    ``CE`` is the voxel-mean cross-entropy and ``Dice`` MONAI's soft Dice loss on the softmax, averaged over
    classes and samples (``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)``). Without ``rect_map`` only the
    first term is computed: the loss of the baselines (supervised only, mean teacher) and of the step that fits the
    rectifier scalar ``a`` (on the rectified logits).

    Args:
        weight: ``w``.
        include_background: count the background class in the Dice term (MONAI's default, ``True``).

    Inputs of ``forward``: ``logits`` y (B, n, *S), ``target`` g (B, 1, *S) or (B, *S) class indices, optional
    ``rect_map`` M (B, n, *S). Returns a 0-dim tensor.
    """

    def __init__(self, weight: float = 0.5, include_background: bool = True) -> None:
        super().__init__()
        self.weight = float(weight)
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=include_background)

    def term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``CE(logits, g) + Dice(logits, g)`` (unweighted), computed in float32."""
        return self.dice_ce(logits.float(), as_label_map(target, logits.dim() - 2).unsqueeze(1))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, rect_map: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.weight * self.term(logits, target)
        if rect_map is not None:
            loss = loss + self.weight * self.term(rect_map, target)
        return loss


class ConfidenceWeightedCELoss(nn.Module):
    """Pseudo-label cross-entropy weighted per sample by the fraction of confident voxels::

        w_b = mean_v [c_bv >= threshold]
        L   = (1 / B) sum_b  w_b * mean_v CE(logits_bv, yhat_bv)

    Args:
        threshold: the confidence threshold (0.97 in CRLN).

    Inputs of ``forward``: ``logits`` (B, n, *S) of the student on the strong view, ``pseudo_labels`` yhat
    (B, 1, *S) or (B, *S), ``confidence`` c (same layout as ``pseudo_labels``, values in [0, 1]). Returns a 0-dim
    tensor; ``last_weights`` keeps the detached ``w`` (B,) of the last call.
    """

    def __init__(self, threshold: float = 0.97) -> None:
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
        self.threshold = float(threshold)
        self.last_weights: torch.Tensor | None = None

    def forward(self, logits: torch.Tensor, pseudo_labels: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        spatial = logits.dim() - 2
        target = as_label_map(pseudo_labels, spatial)
        conf = confidence[:, 0] if confidence.dim() == spatial + 2 else confidence
        if conf.shape != target.shape:
            raise ValueError(
                f"confidence shape {list(confidence.shape)} does not match the pseudo-labels "
                f"{list(pseudo_labels.shape)}."
            )
        weights = (conf >= self.threshold).flatten(1).float().mean(dim=1).detach()  # (B,)
        ce = F.cross_entropy(logits.float(), target, reduction="none").flatten(1).mean(dim=1)  # (B,)
        self.last_weights = weights
        return (weights * ce).mean()


class CPSLoss(nn.Module):
    """CRLN's Collaborative Positive Supervision: a regional contrast (InfoNCE) loss on per-voxel embeddings.

    Over the valid voxels ``V`` (the caller passes labelled voxels + unlabelled ones with confidence >= 0.7), with
    labels ``l_v`` (ground truth or pseudo-label) and the student's probability ``p_v`` of that label:

    1. class means ``mu_k = mean_{v in V, l_v = k} z_v`` (detached) for every present class ``k``;
    2. positive key ``q_k = mu_k``, or with the teacher's prototype mean ``pbar_k`` (after the warm-up)
       ``q_k = (mu_k + xi * pbar_k) / (1 + xi)``;
    3. anchors: up to ``num_anchors`` voxels drawn uniformly without replacement from the hard voxels of class
       ``k`` (``p_v < hard_threshold``);
    4. negatives: ``num_negatives`` per anchor; each one's class ``j != k`` (present) is drawn with probability
       ``softmax_j(cos(mu_k, mu_j) / class_temperature)``, then a voxel uniformly from the valid voxels of ``j``;
    5. per anchor ``a``, with ``s_p = cos(z_a, q_k) / tau`` and ``s_n = cos(z_a, z_n) / tau``:
       ``l_a = -log( exp(s_p) / (exp(s_p) + sum_n exp(s_n)) )``; ``L_k`` = mean over the anchors, ``L`` = mean over
       the classes that have anchors and at least one other present class.

    Range: with every similarity equal (uninformative embeddings) ``l_a = ln(1 + num_negatives)`` (ln 513 = 6.24);
    the floor is reached when each class collapses to one point, the anchors sit on their key and the class points
    form a regular simplex (cosine ``-1 / (n - 1)`` between classes, the lowest that ``n`` unit vectors can share):
    ``ln(1 + num_negatives * exp(-n / ((n - 1) tau)))`` (:meth:`lower_bound`; with tau 0.5 and 512 negatives 2.34 for
    2 classes, 3.28 for 3, 3.60 for 4). Judge a logged CPS value against this floor, not against ``ln 513``.

    Keys (``q_k`` and the negatives) are detached: the gradient flows through the anchors. When no class qualifies
    (an empty class, a single present class, no hard voxel) the loss is ``0 * sum(z)``: zero, finite, and still
    attached to the graph. The loss is computed in float32.

    Sampling uses ``generator`` when given (it must live on the embeddings' device), otherwise the device's global
    RNG, so results are reproducible under ``torch.manual_seed``.

    Args:
        num_anchors: anchors per class (256).
        num_negatives: negatives per anchor (512).
        temperature: ``tau`` of the InfoNCE (0.5).
        class_temperature: temperature of the negative-class distribution (0.5).
        hard_threshold: a voxel is hard when the student's probability of its label is below this (0.97).
        xi: weight of the teacher prototypes in the positive key (0.6 for LA-8, 0.9 for LA-16).

    Inputs of ``forward``:
        embedding: z, (B, E, *S).
        labels: (B, 1, *S) or (B, *S) class indices.
        valid: bool mask, same layout as ``labels``.
        probs: student softmax, (B, n, *S) (used detached).
        prototypes: ``pbar``, (n, E), or ``None`` (warm-up).
        generator: optional ``torch.Generator``.

    Returns a 0-dim tensor; ``last_num_anchors`` holds the number of anchors used in the last call.
    """

    def __init__(
        self,
        num_anchors: int = 256,
        num_negatives: int = 512,
        temperature: float = 0.5,
        class_temperature: float = 0.5,
        hard_threshold: float = 0.97,
        xi: float = 0.6,
    ) -> None:
        super().__init__()
        if num_anchors < 1 or num_negatives < 1:
            raise ValueError(f"num_anchors and num_negatives must be positive, got {num_anchors}, {num_negatives}.")
        if temperature <= 0 or class_temperature <= 0:
            raise ValueError(f"temperatures must be positive, got {temperature}, {class_temperature}.")
        if xi < 0:
            raise ValueError(f"xi must be non-negative, got {xi}.")
        self.num_anchors = int(num_anchors)
        self.num_negatives = int(num_negatives)
        self.temperature = float(temperature)
        self.class_temperature = float(class_temperature)
        self.hard_threshold = float(hard_threshold)
        self.xi = float(xi)
        self.last_num_anchors = 0

    def lower_bound(self, num_classes: int) -> float:
        """The smallest value the loss can take with ``num_classes`` present classes (>= 2; see the class docstring):
        ``ln(1 + num_negatives * exp(-n / ((n - 1) tau)))``."""
        if num_classes < 2:
            raise ValueError(f"the loss needs at least 2 classes, got {num_classes}.")
        n = float(num_classes)
        return math.log1p(self.num_negatives * math.exp(-n / ((n - 1.0) * self.temperature)))

    def forward(
        self,
        embedding: torch.Tensor,
        labels: torch.Tensor,
        valid: torch.Tensor,
        probs: torch.Tensor,
        prototypes: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        spatial = embedding.dim() - 2
        dim, n = embedding.shape[1], probs.shape[1]
        lab = as_label_map(labels, spatial).reshape(-1)
        val = (valid[:, 0] if valid.dim() == spatial + 2 else valid).reshape(-1).bool()
        if lab.numel() != embedding.shape[0] * embedding[0, 0].numel() or val.shape != lab.shape:
            raise ValueError(
                f"labels {list(labels.shape)} / valid {list(valid.shape)} do not match the embedding "
                f"{list(embedding.shape)}."
            )
        if prototypes is not None and tuple(prototypes.shape) != (n, dim):
            raise ValueError(f"prototypes must have shape ({n}, {dim}), got {list(prototypes.shape)}.")
        device = embedding.device
        z = embedding.movedim(1, -1).reshape(-1, dim).float()  # (V, E), channels last
        p = probs.detach().movedim(1, -1).reshape(-1, n).float()
        val = val & (lab >= 0) & (lab < n)
        p_label = p.gather(1, lab.clamp(0, n - 1).unsqueeze(1)).squeeze(1)

        idx_valid = val.nonzero().squeeze(1)
        lab_valid = lab[idx_valid]
        counts = torch.bincount(lab_valid, minlength=n)  # (n,)
        zd = z.detach()
        sums = torch.zeros(n, dim, device=device).index_add_(0, lab_valid, zd[idx_valid])
        mu = sums / counts.clamp(min=1).unsqueeze(1).float()  # (n, E)
        keys = mu if prototypes is None else (mu + self.xi * prototypes.detach().float()) / (1.0 + self.xi)
        # valid voxel indices grouped by class, for uniform sampling of negatives inside a class
        order = torch.argsort(lab_valid, stable=True)
        grouped = idx_valid[order]
        offsets = torch.cumsum(counts, 0) - counts

        present = counts > 0
        mu_n = F.normalize(mu, dim=1)
        class_logits = (mu_n @ mu_n.t()) / self.class_temperature  # (n, n)
        hard = val & (p_label < self.hard_threshold)

        losses: list[torch.Tensor] = []
        num_anchors = 0
        present_list = present.tolist()
        for k in range(n):
            others = present.clone()
            others[k] = False
            if not present_list[k] or not bool(others.any()):
                continue
            hard_k = (hard & (lab == k)).nonzero().squeeze(1)
            if hard_k.numel() == 0:
                continue
            perm = torch.randperm(hard_k.numel(), device=device, generator=generator)[: self.num_anchors]
            anchors = F.normalize(z[hard_k[perm]], dim=1)  # (A, E), with grad
            a = anchors.shape[0]
            cls_prob = torch.softmax(class_logits[k].masked_fill(~others, float("-inf")), dim=0)
            neg_cls = torch.multinomial(cls_prob, a * self.num_negatives, replacement=True, generator=generator)
            u = torch.rand(neg_cls.shape, device=device, generator=generator)
            pick = offsets[neg_cls] + torch.minimum((u * counts[neg_cls]).long(), counts[neg_cls] - 1)
            negatives = F.normalize(zd[grouped[pick]], dim=1).reshape(a, self.num_negatives, dim)
            key = F.normalize(keys[k], dim=0)
            pos_logit = (anchors @ key).unsqueeze(1)  # (A, 1)
            neg_logits = torch.einsum("ae,ane->an", anchors, negatives)  # (A, N_neg)
            logits = torch.cat([pos_logit, neg_logits], dim=1) / self.temperature
            target = torch.zeros(a, dtype=torch.long, device=device)
            losses.append(F.cross_entropy(logits, target))
            num_anchors += a
        self.last_num_anchors = num_anchors
        if not losses:
            return embedding.float().mean() * 0.0
        return torch.stack(losses).mean()
