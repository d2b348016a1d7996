"""Image transforms: the baselines' training augmentation, their evaluation crop, and the CAM-time input.

All take a PIL RGB image and return a normalised ``float32 [3, H, W]`` tensor (ImageNet mean/std, as
DeiT/MCTformer).

* :func:`mctformer_train_transform` - exactly what MCTformer's ``build_transform(is_train=True)``
  builds with its ``main.py`` defaults: timm ``create_transform`` with RandomResizedCrop to
  ``input_size`` (scale 0.08..1, ratio 3/4..4/3, bicubic), horizontal flip p=0.5,
  RandAugment ``rand-m9-mstd0.5-inc1`` (which makes timm skip the 0.4 colour jitter), ToTensor,
  Normalize, RandomErasing p=0.25 'pixel' mode, one box. Its ``PosterizeIncreasing`` op keeps
  ``4 - int(level * 0.4)`` bits, 0 when the sampled magnitude reaches its cap 10 (~2 % of draws at
  m9/mstd0.5); Pillow >= 11 refuses 0 bits (``ValueError: bits must be between or equal to 1 and 8``),
  which stopped a full-size batch of 64 about once in six steps (issue #21's smoke run). 0 bits gives
  what the Pillow of the official code gave: an all-zero image (:func:`posterize_any_bits`).
* :func:`simple_train_transform` - a milder variant for tiny from-scratch models (the synthetic demo):
  RandomResizedCrop with a configurable scale range, horizontal flip, optional colour jitter.
* :func:`eval_transform` - MCTformer's validation transform for classification mAP: resize the
  short side to ``input_size * 256/224`` (bicubic), centre crop ``input_size``.
* :func:`cam_transform` - CAM generation: ToTensor + Normalize only, no resize/crop (the image keeps
  its size; multi-scale resizing is the CAM generator's job).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Transform = Callable[[Image.Image], torch.Tensor]


class ToNormalizedTensor:
    """PIL RGB (or uint8 [H, W, 3] array) -> float32 [3, H, W]: ``(x / 255 - mean) / std``.

    Same numbers as torchvision ``ToTensor`` + ``Normalize`` (those also divide by 255 first), in
    plain torch so the default dataset transform does not import torchvision. Picklable (DataLoader
    workers).
    """

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img) -> torch.Tensor:
        a = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img, dtype=np.uint8)
        x = torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)
        return x.sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return "ToNormalizedTensor(ImageNet mean/std)"


def cam_transform() -> Transform:
    """ToTensor + ImageNet Normalize: PIL [H, W, 3] uint8 -> float32 [3, H, W], no geometry change."""
    return ToNormalizedTensor()


def posterize_any_bits(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize op for any ``bits_to_keep``: >= 8 keeps the image, <= 0 keeps no bit (all zeros, as
    Pillow < 11 computed it), else ``ImageOps.posterize``. Module-level: picklable for DataLoader workers."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, int(bits_to_keep))


def _safe_posterize(t):
    """Give every posterize op of the RandAugment inside ``t`` (a torchvision Compose) :func:`posterize_any_bits`."""
    for sub in getattr(t, "transforms", []):
        for op in getattr(sub, "ops", []):
            if "posterize" in getattr(op, "name", "").lower():
                op.aug_fn = posterize_any_bits
    return t


def mctformer_train_transform(input_size: int = 224) -> Transform:
    """The official MCTformer/DeiT training augmentation (see module docstring) via timm."""
    from timm.data import create_transform

    return _safe_posterize(create_transform(
        input_size=input_size, is_training=True, color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic", re_prob=0.25, re_mode="pixel", re_count=1,
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
    ))


def simple_train_transform(input_size: int, scale: tuple[float, float] = (0.5, 1.0),
                           ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                           color_jitter: float = 0.0) -> Transform:
    """RandomResizedCrop(``input_size``, ``scale``, ``ratio``, bicubic) + flip + optional jitter + normalise.

    ``color_jitter`` > 0 jitters brightness/contrast/saturation by that factor (no hue jitter: on the
    synthetic benchmark hue ranges are part of the class design).
    """
    from torchvision import transforms as T

    t: list = [T.RandomResizedCrop(input_size, scale=scale, ratio=ratio,
                                   interpolation=T.InterpolationMode.BICUBIC)]
    if hflip > 0:
        t.append(T.RandomHorizontalFlip(hflip))
    if color_jitter > 0:
        t.append(T.ColorJitter(color_jitter, color_jitter, color_jitter))
    t += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(t)


def eval_transform(input_size: int = 224) -> Transform:
    """MCTformer's validation transform: Resize(int(256/224 * size), bicubic) + CenterCrop(size) + normalise."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(int((256 / 224) * input_size), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(input_size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def resize_transform(input_size: int) -> Transform:
    """Plain resize to ``input_size`` x ``input_size`` (bicubic) + normalise (fixed-size batches)."""
    from torchvision import transforms as T

    return T.Compose([T.Resize((input_size, input_size), interpolation=T.InterpolationMode.BICUBIC),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def build_transform(name: str, input_size: int, **kwargs) -> Transform:
    """Transform by name: ``mctformer`` | ``simple`` | ``eval`` | ``resize`` | ``cam``."""
    from doei.errors import DoeiError

    if name == "mctformer":
        return mctformer_train_transform(input_size)
    if name == "simple":
        return simple_train_transform(input_size, **kwargs)
    if name == "eval":
        return eval_transform(input_size)
    if name == "resize":
        return resize_transform(input_size)
    if name == "cam":
        return cam_transform()
    raise DoeiError(f"transform {name!r} unknown (expected mctformer, simple, eval, resize or cam)")


def denormalize_uint8(x: torch.Tensor) -> np.ndarray:
    """float32 [3, H, W] normalised tensor -> uint8 [H, W, 3], rounded (for figures).

    (MCTformer's CRF input truncates instead of rounding; the CAM module reproduces that itself.)
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(3, 1, 1)
    img = ((x * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return img.permute(1, 2, 0).contiguous().numpy()
