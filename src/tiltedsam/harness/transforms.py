"""Image transforms written with plain torch ops (torchvision is not a dependency).

Every function works on a batch ``(N, C, H, W)``; a single image is handled by the callers with
``unsqueeze(0)``. Random draws use the ``generator`` passed in, or torch's global generator when it
is ``None`` (so ``DataLoader`` workers, which re-seed the global generator, give independent draws).

The augmentations are the standard ones of the sharpness-aware-minimisation literature:

* CIFAR: pad each side by 4 pixels, take a random 32x32 crop, flip horizontally with probability 1/2.
* ImageFolder sets (DTD, Tiny-ImageNet): random resized crop (area fraction in ``scale``, aspect ratio
  in ``ratio``, log-uniform) resampled bilinearly to the output size, then a random horizontal flip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["random_pad_crop", "random_horizontal_flip", "random_resized_crop", "ImageTransform"]


def random_pad_crop(
    images: torch.Tensor, padding: int, *, fill: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pad every side by ``padding`` pixels with ``fill`` and cut a random crop of the original size.

    Each image gets its own offset ``(dy, dx)`` drawn uniformly from ``{0, ..., 2*padding}^2``.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return images
    num_images, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding), value=fill)
    offset_y = torch.randint(0, 2 * padding + 1, (num_images,), generator=generator)
    offset_x = torch.randint(0, 2 * padding + 1, (num_images,), generator=generator)
    rows = (offset_y[:, None] + torch.arange(height)[None, :]).to(images.device)  # (N, H)
    cols = (offset_x[:, None] + torch.arange(width)[None, :]).to(images.device)  # (N, W)
    batch_index = torch.arange(num_images, device=images.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: (N, H, W, C) -> back to (N, C, H, W).
    cropped = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()


def random_horizontal_flip(
    images: torch.Tensor, probability: float = 0.5, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mirror each image left-right independently with the given probability."""
    flip = torch.rand(images.shape[0], generator=generator) < probability
    if not bool(flip.any()):
        return images
    out = images.clone()
    out[flip.to(images.device)] = images[flip.to(images.device)].flip(-1)
    return out


def random_resized_crop(
    images: torch.Tensor,
    size: tuple[int, int],
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_probability: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop of random area and aspect ratio, resampled bilinearly to ``size``.

    For each image an area fraction ``a ~ U(scale)`` and a log-uniform aspect ratio ``r`` (width/height)
    in ``ratio`` give a crop of ``a H W`` pixels, ``sqrt(a H W r)`` wide and ``sqrt(a H W / r)`` high
    (clamped to the image), at a uniformly random position. All crops (and the optional left-right flip, a sign change of the x
    axis) are applied in one ``grid_sample`` call through per-image affine maps.
    """
    num_images = images.shape[0]
    area = torch.empty(num_images).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(num_images).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    # Crop of a*H*W pixels with width/height r: width sqrt(a H W r) = W sqrt(a r H / W) pixels and height
    # H sqrt(a W / (r H)); as fractions of the image side, clamped to (0, 1] (a crop never leaves the image).
    height, width = images.shape[-2], images.shape[-1]
    crop_w = (area * aspect * height / width).sqrt().clamp(max=1.0)
    crop_h = (area * width / (aspect * height)).sqrt().clamp(max=1.0)
    # Crop centres in normalised coordinates [-1, 1], chosen so the crop stays inside the image.
    centre_x = (torch.rand(num_images, generator=generator) * 2 - 1) * (1 - crop_w)
    centre_y = (torch.rand(num_images, generator=generator) * 2 - 1) * (1 - crop_h)
    flip = torch.rand(num_images, generator=generator) < flip_probability
    sign_x = torch.where(flip, -1.0, 1.0)
    theta = torch.zeros(num_images, 2, 3)
    theta[:, 0, 0] = crop_w * sign_x
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = crop_h
    theta[:, 1, 2] = centre_y
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, [num_images, images.shape[1], size[0], size[1]], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass
class ImageTransform:
    """Batch transform: optional ``uint8 -> float`` scaling, augmentation, then normalisation.

    ``scale``: multiply after casting to float (``1/255`` for ``uint8`` storage, ``None`` when the stored
    tensor is already float). ``mean``/``std``: per-channel normalisation ``(x - mean) / std`` applied
    last, or ``None`` when the stored tensor is already standardised. Augmentation runs on the scaled,
    un-normalised pixels so padding uses ``fill`` in pixel units (black for CIFAR).
    """

    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop_padding: int = 0
    flip: bool = False
    resized_crop: tuple[float, float] | None = None  # area-fraction range; None: no resized crop
    fill: float = 0.0

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.resized_crop is not None

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        out = images.float()
        if self.scale is not None:
            out = out * self.scale
        if self.resized_crop is not None:
            out = random_resized_crop(
                out,
                (out.shape[-2], out.shape[-1]),
                scale=self.resized_crop,
                flip_probability=0.5 if self.flip else 0.0,
                generator=generator,
            )
        else:
            if self.crop_padding > 0:
                out = random_pad_crop(out, self.crop_padding, fill=self.fill, generator=generator)
            if self.flip:
                out = random_horizontal_flip(out, generator=generator)
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=out.dtype, device=out.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=out.dtype, device=out.device).view(1, -1, 1, 1)
            out = (out - mean) / std
        return out
