"""SAL's pretraining objective: local alignment (LA / windowed WLA) plus a global positional (GP) loss.

SAL (self-supervised alignment learning, arXiv 2406.15699) has no public code; these losses are a reconstruction
from the paper's description (see ``shared/docs/methods.md``, section 2). The network side (the 1x1 embedding and the
positional head) is :class:`volssl.networks.SalPretrainNet2d`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LocalAlignmentLoss", "GlobalPositionalLoss", "SalLoss", "windows_to_batch"]

_POSITION_MODES = ("relative", "absolute")


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
    """SAL's global positional loss (its exact form is not public; this is our documented default).

    - ``"relative"`` (default): the head predicts the signed offset of the pair, ``L_GP = mean_b (d_hat_b -
      (p_j,b - p_i,b))^2``; prediction (B,) (or (B, 1)).
    - ``"absolute"``: the head predicts each slice's position, ``L_GP = mean over the 2B slices of (p_hat - p)^2``;
      prediction (B, 2) holding ``(p_i_hat, p_j_hat)``.

    Args:
        mode: ``"relative"`` or ``"absolute"`` (must match the network's ``position_mode``).

    Raises:
        ValueError: an unknown ``mode``.
    """

    def __init__(self, mode: str = "relative") -> None:
        super().__init__()
        if mode not in _POSITION_MODES:
            raise ValueError(f"mode must be one of {_POSITION_MODES}, got {mode!r}.")
        self.mode = mode

    def forward(self, prediction: torch.Tensor, positions: torch.Tensor, positions_2: torch.Tensor) -> torch.Tensor:
        """
        Args:
            prediction: (B,) or (B, 1) predicted offsets (``"relative"``), or (B, 2) predicted positions
                (``"absolute"``).
            positions: positions ``p_i`` of the first slices, (B,) (or any shape with B elements).
            positions_2: positions ``p_j`` of the second slices, (B,).

        Returns:
            0-dim tensor, the mean squared error (float32, or float64 for float64 predictions).

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
        if self.mode == "relative":
            if pred.shape not in ((b,), (b, 1)):
                raise ValueError(
                    f"relative mode expects a prediction of shape ({b},) or ({b}, 1), got {list(pred.shape)} "
                    "(is the network's position_mode 'absolute'?)."
                )
            return F.mse_loss(pred.reshape(-1), p_j - p_i)
        if pred.shape != (b, 2):
            raise ValueError(
                f"absolute mode expects a prediction of shape ({b}, 2), got {list(pred.shape)} "
                "(is the network's position_mode 'relative'?)."
            )
        return F.mse_loss(pred, torch.stack([p_i, p_j], dim=1))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class SalLoss(nn.Module):
    """SAL loss: ``L = L_LA + gp_weight * L_GP`` (``lambda = 1`` by default).

    Takes the output dict of :class:`volssl.networks.SalPretrainNet2d` (the embedded maps of both slices and the
    positional prediction) and the two slices' positions. See :class:`LocalAlignmentLoss` and
    :class:`GlobalPositionalLoss` for the terms. The loss has no parameters (the embedding and the positional head
    are in the network).

    After each call, ``last_terms`` holds detached 0-dim tensors ``{"loss", "la", "gp"}`` for logging.

    Args:
        window: ``r`` of the windowed local alignment (1: full LA; default 2).
        symmetric: symmetric local alignment.
        position_mode: ``"relative"`` or ``"absolute"``, as the network's ``position_mode``.
        gp_weight: ``lambda``, the weight of the positional term (0 disables it).
        embedding_key: output key of the first slice's embedded map.
        embedding_2_key: output key of the second slice's embedded map.
        position_pred_key: output key of the positional prediction.

    Raises:
        ValueError: bad ``window`` or ``position_mode``, or a negative ``gp_weight``.
    """

    def __init__(
        self,
        window: int = 2,
        symmetric: bool = True,
        position_mode: str = "relative",
        gp_weight: float = 1.0,
        embedding_key: str = "embedding",
        embedding_2_key: str = "embedding_2",
        position_pred_key: str = "position_pred",
    ) -> None:
        super().__init__()
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be non-negative, got {gp_weight}.")
        self.local = LocalAlignmentLoss(window=window, symmetric=symmetric)
        self.positional = GlobalPositionalLoss(mode=position_mode)
        self.gp_weight = float(gp_weight)
        self.embedding_key = embedding_key
        self.embedding_2_key = embedding_2_key
        self.position_pred_key = position_pred_key
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(
        self, output: Mapping[str, torch.Tensor], positions: torch.Tensor, positions_2: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            output: the network's output dict: embedded maps (B, c, H, W) of both slices and the positional
                prediction ((B,) relative, (B, 2) absolute).
            positions: ``p_i``, (B,).
            positions_2: ``p_j``, (B,).

        Returns:
            0-dim tensor, the total loss; the parts are in ``last_terms``.

        Raises:
            ValueError: a key is missing from ``output``, or a shape is wrong (see the two terms).
        """
        needed = (self.embedding_key, self.embedding_2_key, self.position_pred_key)
        missing = [k for k in needed if k not in output]
        if missing:
            raise ValueError(f"the network output lacks {missing}; it has keys {sorted(output)}.")
        la = self.local(output[self.embedding_key], output[self.embedding_2_key])
        gp = self.positional(output[self.position_pred_key], positions, positions_2)
        total = la + self.gp_weight * gp.to(la.dtype)
        self.last_terms = {"loss": total.detach(), "la": la.detach(), "gp": gp.detach()}
        return total

    def extra_repr(self) -> str:
        return f"gp_weight={self.gp_weight}"
