"""The few torchvision transforms the built-in vision handlers need, on PIL + torch.

torchvision cannot be imported beside pyserve's torch, so these reproduce its defaults
bit for bit: Resize and CenterCrop work on PIL images exactly as torchvision's PIL path
does, ToTensor and Normalize do the same float32 arithmetic in the same order.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image


class Compose:
    """Applies transforms in order; the object handlers keep as `image_processing`."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image


class Resize:
    """An int size scales the shorter side to it, keeping the aspect ratio (torchvision's rule)."""

    def __init__(self, size: int | Sequence[int], interpolation=Image.BILINEAR):
        self.size = size
        self.interpolation = interpolation

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resizing; the longer side is truncated, as torchvision does."""
        if not isinstance(self.size, int):
            height_out, width_out = self.size
            return width_out, height_out
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def __call__(self, image: Image.Image) -> Image.Image:
        size = self.output_size(*image.size)
        if size == image.size:
            return image
        return image.resize(size, self.interpolation)


class CenterCrop:
    """Crops the centre; an image smaller than the crop is zero-padded first, as torchvision."""

    def __init__(self, size: int | Sequence[int]):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    @staticmethod
    def _offset(have: int, want: int) -> int:
        if want > have:
            # torchvision pads (want - have) // 2 on the leading side, then crops at 0.
            return -((want - have) // 2)
        return int(round((have - want) / 2.0))

    def __call__(self, image: Image.Image) -> Image.Image:
        crop_height, crop_width = self.size
        width, height = image.size
        left, top = self._offset(width, crop_width), self._offset(height, crop_height)
        # PIL fills whatever lies outside the image with zeros, which is torchvision's padding.
        return image.crop((left, top, left + crop_width, top + crop_height))


class ToTensor:
    """PIL image (or HWC array) -> CHW tensor; 8-bit images become float32 in [0, 1].

    Reads PIL's raw bytes with the dtype torchvision picks for each mode, so it needs no
    numpy, which torch does not require.
    """

    _DTYPES = {"I": torch.int32, "I;16": torch.int16, "F": torch.float32}

    def __call__(self, picture) -> torch.Tensor:
        if isinstance(picture, Image.Image):
            if picture.mode == "1":
                picture = picture.convert("L")  # 0/1 bits -> 0/255, as torchvision scales them
            dtype = self._DTYPES.get(picture.mode, torch.uint8)
            flat = torch.frombuffer(bytearray(picture.tobytes()), dtype=dtype)
            array = flat.view(picture.size[1], picture.size[0], len(picture.getbands()))
        else:
            array = torch.as_tensor(picture)
            array = array[:, :, None] if array.ndim == 2 else array
        tensor = array.permute(2, 0, 1).contiguous()
        if tensor.dtype == torch.uint8:
            return tensor.to(torch.float32).div(255)
        return tensor


class Normalize:
    """(tensor - mean) / std per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        return tensor.sub(mean).div(std)


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def imagenet_transform() -> Compose:
    """Resize 256, centre crop 224, to tensor, ImageNet normalisation: the classifiers' input."""
    return Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(IMAGENET_MEAN, IMAGENET_STD)])
