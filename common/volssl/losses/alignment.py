"""SAL's pretraining objective: local alignment (LA / windowed WLA) plus a global positional (GP) loss.

SAL (self-supervised alignment learning, arXiv 2406.15699) has no public code; these losses are a reconstruction
from the paper's description (see ``shared/docs/methods.md``, section 2, and the SAL bundle's model card, which labels
each choice as read from the paper, from its figure, or ours). The network side (the 1x1 embedding and the global
positional head) is :class:`volssl.networks.SalPretrainNet2d`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ._pairwise import cosine_logits, off_diagonal, position_distances
from .supcon import supcon_from_positives

__all__ = [
    "POSITION_MODES",
    "GlobalPositionalLoss",
    "LocalAlignmentLoss",
    "SalLoss",
    "embedding_cosine",
    "windows_to_batch",
]

#: The forms of the global positional loss (see :class:`GlobalPositionalLoss`).
POSITION_MODES = ("contrastive", "relative", "absolute")

# positions are k/S: a gap of exactly the threshold must count as within it despite float rounding
_POSITION_TOLERANCE = 1e-6


def windows_to_batch(x: torch.Tensor, window: int) -> torch.Tensor:
    """Split feature maps into an ``r x r`` grid of windows and put the windows on the batch axis.

    Window ``(u, v)`` (row ``u``, column ``v`` of the grid) of map ``b`` covers rows ``u*h .. (u+1)*h - 1`` and columns
    ``v*w .. (v+1)*w - 1`` with ``h = H / r``, ``w = W / r``; it becomes batch entry ``(b * r + u) * r + v`` and its
    ``h * w`` locations are flattened row-major.

    Args:
        x: feature maps, (B, c, H, W).
        window: ``r``, the number of windows along each side (1: the whole map is one window).

    Returns:
        (B * r * r, c, H * W / r^2).

    Raises:
        ValueError: ``x`` is not 4D, ``r < 1``, or ``H`` or ``W`` is not divisible by ``r``.
    """
    if x.dim() != 4:
        raise ValueError(f"expected feature maps of shape (B, c, H, W), got {list(x.shape)}.")
    r = int(window)
    if r < 1:
        raise ValueError(f"window must be a positive integer, got {window}.")
    b, c, height, width = x.shape
    if height % r or width % r:
        # no padding: padded locations would be aligned too and bias the loss towards the padding value
        raise ValueError(
            f"the {height}x{width} feature map cannot be split into a {r}x{r} grid of windows: H and W must be "
            f"divisible by window={r}. Use patches whose side is a multiple of {r} x (the level's downsampling, "
            "16 for the bottleneck), or another window."
        )
    h, w = height // r, width // r
    x = x.reshape(b, c, r, h, r, w).permute(0, 2, 4, 1, 3, 5)  # (B, r_u, r_v, c, h, w)
    return x.reshape(b * r * r, c, h * w)


class LocalAlignmentLoss(nn.Module):
    """SAL's local alignment loss, full (LA, ``window=1``) or windowed (WLA, ``window=r > 1``).

    The embedded feature maps of two nearby slices, ``E(F(S_i))`` and ``E(F(S_j))`` of shape (B, c, H, W), are
    L2-normalised at every spatial location (over the c channels) and flattened to ``X_i, X_j`` in ``R^(c x hw)``.
    With the cosine similarities ``A = X_i^T X_j`` (hw x hw)::

        L_i->j = 1/hw * sum_rows |1 - max_col A[row, col]|     (each location of S_i finds its best match in S_j)
        L_j->i = 1/hw * sum_cols |1 - max_row A[row, col]|     (each location of S_j finds its best match in S_i)
        L_LA   = (L_i->j + L_j->i) / 2   if symmetric,   L_i->j otherwise

    averaged over the B pairs. The loss is 0 exactly when every location has an identical (direction-wise) match in
    the other map, e.g. for two identical maps or one map and a spatial permutation of it.

    Windowed (WLA): both maps are split into an ``r x r`` grid of windows (``r`` windows per side, each
    ``H/r x W/r``; see :func:`windows_to_batch`) and ``A`` is computed only between corresponding windows, as one
    batched matrix product over the B * r^2 windows. Every window has the same number of locations, so the result is
    the mean of the per-window losses. The similarity tensor has ``B * (HW)^2 / r^2`` entries: ``1/r^2`` of the full
    version (``r = 1`` is the full version exactly). ``H`` and ``W`` must be divisible by ``r`` (``ValueError``
    otherwise; padding would add fake locations to align).

    Memory: ``A`` is built without autograd, only to find each location's best match (argmax), and freed before the
    loss is formed; the loss then recomputes the matched cosines ``<X_i[:, k], X_j[:, m(k)]>`` from the embeddings
    with autograd. Value and gradient are those of differentiating ``max`` directly (the gradient reaches the
    best-matching location only; ties go to the first index), but the backward pass neither keeps ``A`` nor
    allocates a gradient of its size: the peak is one similarity tensor, plus O(B * c * H * W).

    The computation runs in float32 (float64 stays float64), also under autocast.

    Args:
        window: ``r``, the number of windows per side (1: full LA).
        symmetric: average both directions (default) instead of only ``i -> j``.
        eps: small value avoiding division by zero in the per-location normalisation.

    Raises:
        ValueError: ``window < 1``.
    """

    def __init__(self, window: int = 1, symmetric: bool = True, eps: float = 1e-8) -> None:
        super().__init__()
        if int(window) != window or window < 1:
            raise ValueError(f"window must be a positive integer, got {window}.")
        self.window = int(window)
        self.symmetric = bool(symmetric)
        self.eps = float(eps)

    def similarity(self, x_i: torch.Tensor, x_j: torch.Tensor) -> torch.Tensor:
        """The per-window cosine similarity matrices ``A``.

        Args:
            x_i: embedded maps of the first slices, (B, c, H, W), raw or already normalised.
            x_j: embedded maps of the second slices, same shape.

        Returns:
            (B * r^2, hw, hw) with ``hw = H * W / r^2``; ``A[n, k, l] = cos(x_i at location k, x_j at location l)``
            within window ``n`` (ordered as in :func:`windows_to_batch`).

        Raises:
            ValueError: different shapes, not 4D, or sizes not divisible by ``window``.
        """
        a, b = self._unit_windows(x_i, x_j)
        with torch.autocast(a.device.type, enabled=False):  # keep the cosines in full precision under AMP
            return torch.bmm(a.transpose(1, 2), b)

    def _unit_windows(self, x_i: torch.Tensor, x_j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both maps as (B * r^2, c, hw) windows, unit-norm at every location, in float32 (or float64)."""
        if x_i.shape != x_j.shape:
            raise ValueError(f"the two maps must have the same shape, got {list(x_i.shape)} and {list(x_j.shape)}.")
        dtype = torch.float64 if x_i.dtype == torch.float64 else torch.float32
        with torch.autocast(x_i.device.type, enabled=False):
            a = F.normalize(windows_to_batch(x_i.to(dtype), self.window), dim=1, eps=self.eps)
            b = F.normalize(windows_to_batch(x_j.to(dtype), self.window), dim=1, eps=self.eps)
        return a, b

    def forward(self, x_i: torch.Tensor, x_j: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x_i: embedded maps of the first slices, (B, c, H, W), raw or already normalised.
            x_j: embedded maps of the second slices, same shape.

        Returns:
            0-dim tensor, the loss (float32, or float64 for float64 input).

        Raises:
            ValueError: different shapes, not 4D, or sizes not divisible by ``window``.
        """
        a, b = self._unit_windows(x_i, x_j)
        channels = a.shape[1]
        # A is only needed to find each location's best match: build it without autograd (it is not kept for the
        # backward pass, and no gradient of A's size is ever allocated), then recompute the matched cosines.
        with torch.no_grad(), torch.autocast(a.device.type, enabled=False):
            sim = torch.bmm(a.transpose(1, 2), b)  # (N, hw, hw), N = B * r^2
            best_in_j = sim.argmax(dim=2)  # (N, hw): for each location of S_i, its match in S_j
            best_in_i = sim.argmax(dim=1) if self.symmetric else None  # for each location of S_j, its match in S_i
            del sim

        def matched_cosine(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            # cos(x[:, :, k], y[:, :, index[:, k]]): the row maximum, with the same (sub)gradient as max itself
            return (x * y.gather(2, index.unsqueeze(1).expand(-1, channels, -1))).sum(dim=1)

        forward_term = (1.0 - matched_cosine(a, b, best_in_j)).abs().mean()
        if best_in_i is None:
            return forward_term
        backward_term = (1.0 - matched_cosine(b, a, best_in_i)).abs().mean()
        return 0.5 * (forward_term + backward_term)

    def extra_repr(self) -> str:
        return f"window={self.window}, symmetric={self.symmetric}"


class GlobalPositionalLoss(nn.Module):
    """SAL's global positional (GP) loss. The paper says only that it uses the slices' relative positions for global
    consistency, and its Fig. 1 shows slices of two subjects and four kinds of pairs; the exact form is not public.
    Three forms are implemented (the bundle's model card argues the choice and ablates it):

    - ``"contrastive"`` (default): a supervised-contrastive (SupCon) loss over the projected pooled features of all
      2B slices of the batch, from many volumes, with positives by close relative position, as in PCL. With
      ``z`` the 2B projections (both slices of every pair), ``s_ab = cos(z_a, z_b) / tau`` and the positives
      ``P(a) = {b != a : |p_a - p_b| <= threshold}`` (slices of the same or of another subject; the partner of a pair
      within ``threshold`` is one)::

          L_GP = (tau / base_tau) * mean_{a : P(a) != {}} -1/|P(a)| sum_{b in P(a)} log(exp(s_ab) / D_a),
          D_a  = sum_{k != a} exp(s_ak)

      Every other slice of the batch is in the denominator, which pushes apart slices at distant positions: the
      repulsion that the local alignment lacks. Prediction: (B, 2, D), the projections of ``(S_i, S_j)``.
      ``<= threshold`` (with a 1e-6 tolerance, as the pairing rule of :class:`volssl.data.SlicePairDataset`) differs
      from PCL's strict ``<``, so that a pair's partner is always a positive.
    - ``"relative"``: the head predicts the signed offset of the pair, ``L_GP = mean_b (d_hat_b - (p_j,b - p_i,b) /
      s)^2``; prediction (B,) (or (B, 1)). With ``standardize`` (default) ``s`` is the root mean square of the batch's
      offsets (a constant of the batch, no gradient), so the target has unit mean square whatever the threshold; the
      earlier reconstruction used ``s = 1``: offsets within ``t = 0.1`` then have a mean square of about 0.004 and
      the term's gradient is negligible.
    - ``"absolute"``: the head predicts each slice's position, ``L_GP = mean over the 2B slices of (p_hat - (p - m) /
      s)^2`` with the batch's mean ``m`` and standard deviation ``s`` of the 2B positions when ``standardize`` (else
      ``m = 0, s = 1``); prediction (B, 2) holding ``(p_i_hat, p_j_hat)``.

    Args:
        mode: ``"contrastive"``, ``"relative"`` or ``"absolute"`` (must match the network's ``position_mode``).
        threshold: the position gap of a positive (contrastive mode).
        temperature: ``tau`` (contrastive mode).
        base_temperature: ``base_tau``; ``None`` means ``tau`` (factor 1; PCL's released code has 0.07).
        standardize: standardise the regression target (relative and absolute modes).

    Raises:
        ValueError: an unknown ``mode``, a negative ``threshold`` or a non-positive temperature.
    """

    def __init__(
        self,
        mode: str = "contrastive",
        threshold: float = 0.1,
        temperature: float = 0.1,
        base_temperature: float | None = None,
        standardize: bool = True,
    ) -> None:
        super().__init__()
        if mode not in POSITION_MODES:
            raise ValueError(f"mode must be one of {POSITION_MODES}, got {mode!r}.")
        if threshold < 0:
            raise ValueError(f"threshold must be non-negative, got {threshold}.")
        if temperature <= 0 or (base_temperature is not None and base_temperature <= 0):
            raise ValueError(f"temperatures must be positive, got {temperature}, {base_temperature}.")
        self.mode = mode
        self.threshold = float(threshold)
        self.temperature = float(temperature)
        self.base_temperature = float(temperature if base_temperature is None else base_temperature)
        self.standardize = bool(standardize)

    def _contrastive(self, pred: torch.Tensor, p_i: torch.Tensor, p_j: torch.Tensor) -> torch.Tensor:
        b = p_i.numel()
        if pred.ndim != 3 or pred.shape[:2] != (b, 2):
            raise ValueError(
                f"contrastive mode expects projections of shape ({b}, 2, D), got {list(pred.shape)} "
                "(is the network's position_mode a regression mode?)."
            )
        z = torch.cat([pred[:, 0], pred[:, 1]], dim=0)  # (2B, D): all first slices, then all second slices
        p = torch.cat([p_i, p_j])
        logits = off_diagonal(cosine_logits(z, self.temperature))
        positives = off_diagonal(position_distances(p)) <= self.threshold + _POSITION_TOLERANCE
        return (self.temperature / self.base_temperature) * supcon_from_positives(logits, positives)

    def _scale(self, values: torch.Tensor) -> torch.Tensor:
        """Root mean square of ``values`` (1 when all are 0, or when not standardising)."""
        if not self.standardize:
            return torch.ones((), dtype=values.dtype, device=values.device)
        rms = values.pow(2).mean().sqrt()
        return torch.where(rms > 0, rms, torch.ones_like(rms))

    def forward(self, prediction: torch.Tensor, positions: torch.Tensor, positions_2: torch.Tensor) -> torch.Tensor:
        """
        Args:
            prediction: (B, 2, D) projections (``"contrastive"``), (B,) or (B, 1) predicted offsets
                (``"relative"``), or (B, 2) predicted positions (``"absolute"``).
            positions: positions ``p_i`` of the first slices, (B,) (or any shape with B elements).
            positions_2: positions ``p_j`` of the second slices, (B,).

        Returns:
            0-dim tensor (float32, or float64 for float64 predictions).

        Raises:
            ValueError: the prediction's shape does not fit the mode or the batch.
        """
        dtype = torch.float64 if prediction.dtype == torch.float64 else torch.float32
        p_i = torch.as_tensor(positions, device=prediction.device).to(dtype).reshape(-1)
        p_j = torch.as_tensor(positions_2, device=prediction.device).to(dtype).reshape(-1)
        if p_i.shape != p_j.shape:
            raise ValueError(f"positions and positions_2 differ in size: {p_i.numel()} and {p_j.numel()}.")
        pred = prediction.to(dtype)
        b = p_i.numel()
        if self.mode == "contrastive":
            return self._contrastive(pred, p_i, p_j)
        if self.mode == "relative":
            if pred.shape not in ((b,), (b, 1)):
                raise ValueError(
                    f"relative mode expects a prediction of shape ({b},) or ({b}, 1), got {list(pred.shape)} "
                    "(is the network's position_mode another one?)."
                )
            offset = p_j - p_i
            return F.mse_loss(pred.reshape(-1), offset / self._scale(offset))
        if pred.shape != (b, 2):
            raise ValueError(
                f"absolute mode expects a prediction of shape ({b}, 2), got {list(pred.shape)} "
                "(is the network's position_mode another one?)."
            )
        both = torch.stack([p_i, p_j], dim=1)
        centre = both.mean() if self.standardize else torch.zeros((), dtype=dtype, device=both.device)
        return F.mse_loss(pred, (both - centre) / self._scale(both - centre))

    def extra_repr(self) -> str:
        if self.mode == "contrastive":
            return f"mode={self.mode!r}, threshold={self.threshold}, temperature={self.temperature}"
        return f"mode={self.mode!r}, standardize={self.standardize}"


def embedding_cosine(*maps: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between the per-location embeddings of feature maps, all locations of all maps pooled.

    With ``u_k`` the L2-normalised embedding of location ``k`` (over channels) and ``M`` locations in all,
    ``|mean_k u_k|^2 = 1/M^2 sum_{k,l} cos(u_k, u_l)``: the mean over all pairs (self-pairs included, a 1/M bias),
    in O(M) instead of O(M^2). 1 when every location of every slice embeds to the same direction: the collapse the
    local alignment loss alone drifts into (its global minimum).

    Args:
        maps: feature maps (B, c, H, W) of the same channel count.

    Returns:
        0-dim tensor, detached, in [0, 1].
    """
    with torch.no_grad():
        units = [F.normalize(m.detach().float(), dim=1).transpose(0, 1).reshape(m.shape[1], -1) for m in maps]
        u = torch.cat(units, dim=1)
        return u.mean(dim=1).pow(2).sum()


class SalLoss(nn.Module):
    """SAL loss: ``L = la_weight * L_LA + gp_weight * L_GP`` (both weights 1 by default: ``L = L_LA + lambda L_GP``
    with ``lambda = 1``).

    Takes the output dict of :class:`volssl.networks.SalPretrainNet2d` (the embedded maps of both slices and the
    global positional output) and the two slices' positions. See :class:`LocalAlignmentLoss` and
    :class:`GlobalPositionalLoss` for the terms. The loss has no parameters (the embedding and the heads are in the
    network).

    After each call, ``last_terms`` holds detached 0-dim tensors for logging: ``loss``, ``la``, ``gp`` and
    ``la_cosine`` (:func:`embedding_cosine` of the LA embeddings of both slices: it rises to 1 when the alignment
    embedding collapses, even while the encoder does not).

    Args:
        window: ``r`` of the windowed local alignment (1: full LA; default 2).
        symmetric: symmetric local alignment.
        position_mode: ``"contrastive"``, ``"relative"`` or ``"absolute"``, as the network's ``position_mode``.
        gp_weight: ``lambda``, the weight of the positional term (0 disables it).
        la_weight: the weight of the local alignment term (0 disables it; for ablations).
        gp_threshold: position gap of a positive in the contrastive GP.
        gp_temperature: temperature of the contrastive GP.
        gp_standardize: standardise the regression target of the relative/absolute GP.
        embedding_key: output key of the first slice's embedded map.
        embedding_2_key: output key of the second slice's embedded map.
        position_pred_key: output key of the positional output.

    Raises:
        ValueError: bad ``window``, ``position_mode`` or GP settings, or a negative weight.
    """

    def __init__(
        self,
        window: int = 2,
        symmetric: bool = True,
        position_mode: str = "contrastive",
        gp_weight: float = 1.0,
        la_weight: float = 1.0,
        gp_threshold: float = 0.1,
        gp_temperature: float = 0.1,
        gp_standardize: bool = True,
        embedding_key: str = "embedding",
        embedding_2_key: str = "embedding_2",
        position_pred_key: str = "position_pred",
    ) -> None:
        super().__init__()
        if gp_weight < 0 or la_weight < 0:
            raise ValueError(f"gp_weight and la_weight must be non-negative, got {gp_weight} and {la_weight}.")
        self.local = LocalAlignmentLoss(window=window, symmetric=symmetric)
        self.positional = GlobalPositionalLoss(
            mode=position_mode, threshold=gp_threshold, temperature=gp_temperature, standardize=gp_standardize
        )
        self.gp_weight = float(gp_weight)
        self.la_weight = float(la_weight)
        self.embedding_key = embedding_key
        self.embedding_2_key = embedding_2_key
        self.position_pred_key = position_pred_key
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(
        self, output: Mapping[str, torch.Tensor], positions: torch.Tensor, positions_2: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            output: the network's output dict: embedded maps (B, c, H, W) of both slices and the positional output
                ((B, 2, D) contrastive, (B,) relative, (B, 2) absolute).
            positions: ``p_i``, (B,).
            positions_2: ``p_j``, (B,).

        Returns:
            0-dim tensor, the total loss; the parts are in ``last_terms``. Both terms are always computed (and
            logged), also at weight 0.

        Raises:
            ValueError: a key is missing from ``output``, or a shape is wrong (see the two terms).
        """
        needed = (self.embedding_key, self.embedding_2_key, self.position_pred_key)
        missing = [k for k in needed if k not in output]
        if missing:
            raise ValueError(f"the network output lacks {missing}; it has keys {sorted(output)}.")
        emb_i, emb_j = output[self.embedding_key], output[self.embedding_2_key]
        la = self.local(emb_i, emb_j)
        gp = self.positional(output[self.position_pred_key], positions, positions_2)
        total = self.la_weight * la + self.gp_weight * gp.to(la.dtype)
        self.last_terms = {
            "loss": total.detach(),
            "la": la.detach(),
            "gp": gp.detach(),
            "la_cosine": embedding_cosine(emb_i, emb_j),
        }
        return total

    def extra_repr(self) -> str:
        return f"la_weight={self.la_weight}, gp_weight={self.gp_weight}"
