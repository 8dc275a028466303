"""Strong view of an unlabelled batch for CRLN / mean-teacher training, as torch functions on batched tensors.

The batch is an image ``x`` (B, C, H, W, D), the teacher's pseudo-labels ``y`` (B, H, W, D) (or (B, 1, H, W, D))
and its confidences ``c`` (same layout as ``y``). ``H, W`` is the slice plane and ``D`` the slice (depth) axis,
MONAI's layout. Geometric steps move ``x``, ``y`` and ``c`` together (``y``, ``c`` with nearest-neighbour sampling),
intensity steps touch ``x`` only. Steps of :class:`StrongView3d`, in order:

1. in-plane rescale: zoom by ``s ~ U(scale_range)`` per sample about the centre, size kept (reflection at the border);
2. CutMix inside the batch: sample ``b`` takes a box from sample ``(b + 1) % B``; ``lambda ~ Beta(alpha, alpha)``,
   box sides ``sqrt(1 - lambda) * (H, W)`` at a uniform position, the full depth ``D``;
3. brightness: ``x * U(brightness_range)`` per sample;
4. Gaussian noise: ``x + clip(N(0, noise_std^2), -noise_clip, noise_clip)``;
5. rot90 in-plane (``k ~ U{0..3}``; ``{0, 2}`` if ``H != W``) then a flip along one in-plane axis, per sample.

Random parameters (per sample) are drawn on the CPU from ``generator`` (or the global CPU RNG); the noise tensor is
drawn on the image's device, with ``generator`` when it lives there, else with that device's global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["StrongView3d", "sample_beta", "inplane_rescale", "batch_cutmix", "brightness_noise", "rot_flip_inplane"]


def _check(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    if x.dim() != 5:
        raise ValueError(f"the image batch must be (B, C, H, W, D), got shape {list(x.shape)}.")
    channel = y.dim() == 5
    y4 = y[:, 0] if channel else y
    c4 = c[:, 0] if c.dim() == 5 else c
    if y4.shape != (x.shape[0],) + tuple(x.shape[2:]) or c4.shape != y4.shape:
        raise ValueError(
            f"pseudo-labels {list(y.shape)} and confidences {list(c.shape)} must be (B, H, W, D) or (B, 1, H, W, D) "
            f"for the image {list(x.shape)}."
        )
    return y4, c4, channel


def sample_beta(alpha: float, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``size`` draws of Beta(alpha, alpha) on the CPU.

    An integer ``alpha`` uses the order statistic ``Beta(a, a) = U_(a)`` of ``2a - 1`` uniforms, so that ``generator``
    applies; other values use ``torch.distributions.Beta`` (the global RNG).
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}.")
    if float(alpha).is_integer():
        a = int(alpha)
        u = torch.rand(size, 2 * a - 1, generator=generator)
        return u.sort(dim=1).values[:, a - 1]
    return torch.distributions.Beta(float(alpha), float(alpha)).sample((size,))


def inplane_rescale(
    x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, scales: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zoom each sample in-plane (H, W) by ``scales[b]`` about the centre, keeping the size (D untouched).

    ``x`` (B, C, H, W, D) trilinear, ``y`` and ``c`` (B, H, W, D) nearest; reflection padding when zooming out.
    """
    b = x.shape[0]
    theta = torch.zeros(b, 3, 4, dtype=torch.float32)
    inv = 1.0 / scales.float()
    # affine_grid's coordinates are (last, middle, first) spatial axis = (D, W, H)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = inv
    theta[:, 2, 2] = inv
    theta = theta.to(x.device)
    grid = F.affine_grid(theta, [b, 1, *x.shape[2:]], align_corners=False)
    xo = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False).to(x.dtype)
    yc = torch.stack([y.float(), c.float()], dim=1)
    yc = F.grid_sample(yc, grid, mode="nearest", padding_mode="reflection", align_corners=False)
    return xo, yc[:, 0].to(y.dtype), yc[:, 1].to(c.dtype)


def batch_cutmix(
    x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, lam: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CutMix inside the batch: sample ``b`` receives a full-depth box of sample ``(b + 1) % B``.

    Box sides ``round(sqrt(1 - lam[b]) * H)``, ``round(sqrt(1 - lam[b]) * W)``, top-left corner uniform so that the
    box fits. The same box is pasted into the image ``x`` (B, C, H, W, D), pseudo-labels ``y`` and confidences ``c``
    (B, H, W, D). A batch of one is returned unchanged.

    Returns:
        ``(x, y, c, box)``, ``box`` (B, H, W, D) bool: True where the voxel came from the partner sample.
    """
    b, _, h, w, d = x.shape
    box = torch.zeros(b, h, w, d, dtype=torch.bool, device=x.device)
    if b < 2:
        return x, y, c, box
    ratio = torch.sqrt(1.0 - lam.float().clamp(0.0, 1.0))
    for i in range(b):
        bh, bw = int(round(float(ratio[i]) * h)), int(round(float(ratio[i]) * w))
        if bh == 0 or bw == 0:
            continue
        r0 = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
        c0 = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
        box[i, r0 : r0 + bh, c0 : c0 + bw, :] = True
    partner = torch.roll(torch.arange(b, device=x.device), shifts=-1)
    xm = torch.where(box.unsqueeze(1), x[partner], x)
    ym = torch.where(box, y[partner], y)
    cm = torch.where(box, c[partner], c)
    return xm, ym, cm, box


def brightness_noise(
    x: torch.Tensor,
    factors: torch.Tensor,
    noise_std: float,
    noise_clip: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``x * factors[b] + clip(N(0, noise_std^2), -noise_clip, noise_clip)`` for ``x`` (B, C, ...)."""
    x = x * factors.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    if noise_std > 0:
        gen = generator if generator is not None and generator.device == x.device else None
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=gen) * noise_std
        x = x + noise.clamp(-noise_clip, noise_clip)
    return x


def rot_flip_inplane(
    x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, ks: Sequence[int], flip_axes: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample ``b``: ``rot90`` by ``ks[b]`` in the (H, W) plane, then a flip along in-plane axis ``flip_axes[b]``
    (0 = H, 1 = W, -1 = none). The same for ``x`` (B, C, H, W, D), ``y``, ``c`` (B, H, W, D).

    Raises:
        ValueError: an odd ``k`` for a non-square plane.
    """
    xs, ys, cs = [], [], []
    for i in range(x.shape[0]):
        k, f = int(ks[i]) % 4, int(flip_axes[i])
        if k % 2 == 1 and x.shape[2] != x.shape[3]:
            raise ValueError(f"an odd rot90 needs a square plane, got {x.shape[2]}x{x.shape[3]}.")
        xi, yi, ci = x[i], y[i], c[i]  # (C, H, W, D), (H, W, D)
        if k:
            xi, yi, ci = torch.rot90(xi, k, (1, 2)), torch.rot90(yi, k, (0, 1)), torch.rot90(ci, k, (0, 1))
        if f >= 0:
            xi, yi, ci = torch.flip(xi, (f + 1,)), torch.flip(yi, (f,)), torch.flip(ci, (f,))
        xs.append(xi)
        ys.append(yi)
        cs.append(ci)
    return torch.stack(xs), torch.stack(ys), torch.stack(cs)


class StrongView3d:
    """The strong view of an unlabelled batch (see the module docstring for the steps).

    Args:
        scale_range: in-plane zoom range; ``None`` skips the rescale.
        cutmix_alpha: ``alpha`` of ``lambda ~ Beta(alpha, alpha)`` (4); ``None`` or 0 skips CutMix.
        brightness_range: multiplicative brightness range.
        noise_std: std of the Gaussian noise (0 disables it).
        noise_clip: clip of the noise.
        rot_flip: apply rot90 + flip.

    ``__call__(image, pseudo_labels, confidence, generator=None)`` returns ``(image, pseudo_labels, confidence)``,
    each in its input layout (labels keep their dtype); the CutMix box of the last call is kept in ``last_box``.
    """

    def __init__(
        self,
        scale_range: tuple[float, float] | None = (0.8, 1.2),
        cutmix_alpha: float | None = 4.0,
        brightness_range: tuple[float, float] = (0.75, 1.25),
        noise_std: float = 0.1,
        noise_clip: float = 0.2,
        rot_flip: bool = True,
    ) -> None:
        if scale_range is not None and not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {scale_range}.")
        if not 0 <= brightness_range[0] <= brightness_range[1]:
            raise ValueError(f"brightness_range must be (lo, hi) with 0 <= lo <= hi, got {brightness_range}.")
        if noise_std < 0 or noise_clip < 0:
            raise ValueError(f"noise_std and noise_clip must be non-negative, got {noise_std}, {noise_clip}.")
        self.scale_range = None if scale_range is None else (float(scale_range[0]), float(scale_range[1]))
        self.cutmix_alpha = float(cutmix_alpha) if cutmix_alpha else None
        self.brightness_range = (float(brightness_range[0]), float(brightness_range[1]))
        self.noise_std = float(noise_std)
        self.noise_clip = float(noise_clip)
        self.rot_flip = bool(rot_flip)
        self.last_box: torch.Tensor | None = None

    def __call__(
        self,
        image: torch.Tensor,
        pseudo_labels: torch.Tensor,
        confidence: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, c, y_channel = _check(image, pseudo_labels, confidence)
        c_channel = confidence.dim() == 5
        x = image
        b = x.shape[0]
        if self.scale_range is not None and self.scale_range != (1.0, 1.0):
            lo, hi = self.scale_range
            scales = lo + (hi - lo) * torch.rand(b, generator=generator)
            x, y, c = inplane_rescale(x, y, c, scales)
        self.last_box = None
        if self.cutmix_alpha is not None:
            lam = sample_beta(self.cutmix_alpha, b, generator)
            x, y, c, self.last_box = batch_cutmix(x, y, c, lam, generator)
        lo, hi = self.brightness_range
        factors = lo + (hi - lo) * torch.rand(b, generator=generator)
        x = brightness_noise(x, factors, self.noise_std, self.noise_clip, generator)
        if self.rot_flip:
            square = x.shape[2] == x.shape[3]
            # an odd rot90 would swap H and W: non-square planes get k in {0, 2}
            ks = torch.randint(0, 4, (b,), generator=generator)
            if not square:
                ks = 2 * (ks % 2)
            axes = torch.randint(0, 2, (b,), generator=generator)
            x, y, c = rot_flip_inplane(x, y, c, ks.tolist(), axes.tolist())
        return x, (y.unsqueeze(1) if y_channel else y), (c.unsqueeze(1) if c_channel else c)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(scale_range={self.scale_range}, cutmix_alpha={self.cutmix_alpha}, "
            f"brightness_range={self.brightness_range}, noise_std={self.noise_std}, noise_clip={self.noise_clip}, "
            f"rot_flip={self.rot_flip})"
        )
