"""A checkpoint's image processor as transformers runs it, as the worker's `ImageInput`.

`preprocessor_config.json` names a transformers image processor (`image_processor_type`, or
an older `feature_extractor_type`, or none: the `model_type`'s). transformers builds it with
that class's own defaults (its Pil backend here: no torchvision), and each class resizes and
crops by its own rule. `PROCESSORS` holds the rules of the classes the loader follows, read
from transformers' source; another class, or a field those rules do not follow (a size by
`longest_edge`, padding to `pad_size`), is refused naming the field and its value.
tests/test_hf_checkpoint.py holds each rule to the class's own output on JPEGs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import AutoImageProcessor, PreTrainedConfig
from transformers.image_utils import SizeDict

from pipeline.errors import SpecError
from pipeline.models.hf_common import checkpoint_file, image_hw
from pipeline.spec import ImageInput

PREPROCESSOR = "preprocessor_config.json"
# What a folder-only user can write instead of a processor the pipeline does not follow.
PLAIN = (
    '"image_processor_type": "ViTImageProcessor" and "size": {"height": H, "width": W} (a resize to the model\'s size), '
    'or "size": {"shortest_edge": S} with "do_center_crop": true and "crop_size": {"height": H, "width": W}; '
    '"image_mean" and "image_std" the model\'s'
)
# ConvNeXt crops inside its resize below this shortest edge, and warps to a square at it and above.
CONVNEXT_WARP = 384


@dataclass(frozen=True)
class Geometry:
    """Where an image goes before it is rescaled: its shortest edge to `shortest_edge` (the
    aspect ratio kept, the long edge truncated to an int as transformers does), or exactly to
    `resize` (height, width); then centre-cropped to `crop` (height, width)."""

    shortest_edge: int | None = None
    resize: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None


@dataclass(frozen=True)
class Processor:
    """The image processor transformers built from the folder, and where its fields came from."""

    path: Path
    processor: Any
    name: str  # as preprocessor_config.json names it

    def get(self, field: str) -> Any:
        return getattr(self.processor, field, None)

    def size(self, field: str) -> dict[str, int]:
        """A size field as transformers holds it (a SizeDict): only the keys it sets."""
        value = self.get(field)
        return {k: int(v) for k, v in dict(value).items()} if value is not None else {}

    def refuse(self, field: str, why: str, fix: str = f"save a preprocessor_config.json of {PLAIN}") -> SpecError:
        value = self.get(field)
        shown = json.dumps(dict(value) if isinstance(value, SizeDict) else value, default=str)
        return SpecError("model", f"{self.path}: {field} {shown} ({self.name}): {why}", fix)


def by_size(p: Processor, size: dict[str, int]) -> Geometry:
    """PilBackend.resize: shortest_edge keeps the aspect ratio; height and width resize to exactly that."""
    if "longest_edge" in size or ("max_height" in size and "max_width" in size):
        raise p.refuse("size", "a resize bounded by the longest edge makes images of different sizes, which the pipeline does not follow")
    if "shortest_edge" in size:
        return Geometry(shortest_edge=size["shortest_edge"])
    if "height" in size and "width" in size:
        return Geometry(resize=(size["height"], size["width"]))
    raise p.refuse("size", "it has neither shortest_edge nor height and width")


def plain(p: Processor) -> Geometry:
    return by_size(p, p.size("size"))


def crop_pct(p: Processor) -> float:
    value = p.get("crop_pct")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise p.refuse(
            "crop_pct", "it is the fraction of the resized image the crop keeps", "set crop_pct to a number in (0, 1], e.g. 0.875"
        )
    return float(value)


def convnext(p: Processor) -> Geometry:
    """ConvNextImageProcessor.resize: below 384, the shortest edge to int(shortest_edge / crop_pct),
    then a centre crop of shortest_edge square; at 384 and above, a warp to that square."""
    edge = p.size("size").get("shortest_edge")
    if edge is None:
        raise p.refuse("size", "ConvNeXt's resize reads only shortest_edge", 'give "size": {"shortest_edge": 224} (and crop_pct)')
    if edge >= CONVNEXT_WARP:
        return Geometry(resize=(edge, edge))
    return Geometry(shortest_edge=int(edge / crop_pct(p)), crop=(edge, edge))


def levit(p: Processor) -> Geometry:
    """LevitImageProcessor.resize: the shortest edge to int(256 / 224 * shortest_edge)."""
    size = p.size("size")
    if "shortest_edge" in size:
        return Geometry(shortest_edge=int((256 / 224) * size["shortest_edge"]))
    return by_size(p, size)


def poolformer(p: Processor) -> Geometry:
    """PoolFormerImageProcessor.resize: the size over crop_pct, a square one as a shortest edge."""
    size = p.size("size")
    if p.get("crop_pct") is None:
        return by_size(p, size)
    pct = crop_pct(p)
    if "shortest_edge" in size:
        return Geometry(shortest_edge=int(size["shortest_edge"] / pct))
    if "height" in size and "width" in size and size["height"] == size["width"]:
        return Geometry(shortest_edge=int(size["height"] / pct))
    if "height" in size and "width" in size:
        return Geometry(resize=(int(size["height"] / pct), int(size["width"] / pct)))
    raise p.refuse("size", "PoolFormer's resize reads shortest_edge, or height and width")


@dataclass(frozen=True)
class Rule:
    """A processor class's resize (then its centre crop), and whether its preprocess pads (do_pad)."""

    resize: Callable[[Processor], Geometry]
    pads: bool = True


# The Pil backends whose preprocess is resize, centre crop, rescale, normalise (BEiT and
# MobileNetV2 add only segmentation maps), each with its own resize.
PROCESSORS: dict[str, Rule] = {
    "ViTImageProcessorPil": Rule(plain),  # also Swin, DINAT, I-JEPA, SwiftFormer, ViT-MSN
    "DeiTImageProcessorPil": Rule(plain),
    "BitImageProcessorPil": Rule(plain),  # also DINOv2, FocalNet, Hiera
    "CLIPImageProcessorPil": Rule(plain),
    "SiglipImageProcessorPil": Rule(plain),
    "PvtImageProcessorPil": Rule(plain),
    "MobileNetV1ImageProcessorPil": Rule(plain),
    "MobileNetV2ImageProcessorPil": Rule(plain, pads=False),
    "BeitImageProcessorPil": Rule(plain, pads=False),  # also Data2Vec-vision
    "ConvNextImageProcessorPil": Rule(convnext, pads=False),  # also ResNet, RegNet, CvT, ConvNeXt V2
    "LevitImageProcessorPil": Rule(levit),
    "PoolFormerImageProcessorPil": Rule(poolformer),
}


def geometry(p: Processor) -> Geometry:
    """The processor's resize and crop, or a SpecError naming the field it does not follow."""
    rule = PROCESSORS.get(type(p.processor).__name__)
    if rule is None:
        raise unknown(p.path, p.name, f"it resizes or crops by a rule the pipeline does not follow ({type(p.processor).__name__})")
    if not p.get("do_resize"):
        raise p.refuse(
            "do_resize",
            "transformers feeds each image at its own size; the exported model takes one size",
            'set "do_resize": true with the "size" the model was trained at',
        )
    shape = rule.resize(p)
    if p.get("do_center_crop"):
        crop = p.size("crop_size")
        if "height" not in crop or "width" not in crop:
            raise p.refuse("crop_size", "a centre crop needs height and width", 'give "crop_size": {"height": H, "width": W}')
        if shape.crop is not None:
            raise p.refuse("do_center_crop", f"its resize crops to {shape.crop} already", 'set "do_center_crop": false')
        shape = replace(shape, crop=(crop["height"], crop["width"]))
    if rule.pads and p.get("do_pad") and p.get("pad_size") is not None:
        raise p.refuse(
            "pad_size",
            "padding each image to a size is not followed",
            'set "do_pad": false: size and crop_size alone make the model\'s size',
        )
    if shape.crop is None and shape.resize is None:
        raise p.refuse(
            "size",
            "a shortest edge without a centre crop makes images of different sizes",
            'set "do_center_crop": true with "crop_size": {"height": H, "width": W}, or give "size": {"height": H, "width": W}',
        )
    return shape


def unknown(path: Path, name: str, why: str) -> SpecError:
    names = ", ".join(sorted(n.removesuffix("Pil") for n in PROCESSORS))
    return SpecError(
        "model",
        f"{path}: image_processor_type {name}: {why}",
        f"save a preprocessor_config.json of one the pipeline follows ({names}), e.g. {PLAIN}",
    )


def load(folder: Path, config: PreTrainedConfig) -> Processor:
    """The image processor transformers builds from the folder (its Pil backend), or a SpecError."""
    path = checkpoint_file(
        folder,
        PREPROCESSOR,
        "an image model's inputs are made by its image processor",
        f"save it beside the model: AutoImageProcessor.from_pretrained(...).save_pretrained({str(folder)!r})",
    )
    raw = json.loads(path.read_text())
    name = raw.get("image_processor_type") or raw.get("feature_extractor_type") or f"(none; model_type {config.model_type})"
    try:
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
    except (ValueError, OSError, ImportError, KeyError, TypeError, AttributeError) as exc:
        raise unknown(path, name, f"transformers cannot build it without torchvision: {exc}".strip()) from None
    return Processor(path, processor, name)


def image_input(folder: Path, config: PreTrainedConfig) -> ImageInput:
    """The preprocessing the folder's image processor does, as the worker runs it on a decoded image."""
    if getattr(config, "num_channels", 3) != 3:
        raise SpecError(
            "model", f"{folder / 'config.json'}: num_channels is {config.num_channels}", "image inputs are RGB: use a model of 3 channels"
        )
    p = load(folder, config)
    shape = geometry(p)
    hw = shape.crop or shape.resize
    assert hw is not None  # geometry refuses a size it cannot fix
    if hasattr(config, "image_size") and image_hw(config.image_size) != hw:
        raise SpecError(
            "model",
            f"{p.path} makes images of {hw[0]}x{hw[1]} (size / crop_size), {folder / 'config.json'} image_size is {config.image_size}",
            "save the image processor the model was trained with",
        )
    normalise = bool(p.get("do_normalize"))
    if normalise and (p.get("image_mean") is None or p.get("image_std") is None):
        raise SpecError("model", f"{p.path}: do_normalize is set without image_mean and image_std", "give both, three floats each")
    return ImageInput(
        input="pixel_values",
        height=hw[0],
        width=hw[1],
        mean=_rgb(p.get("image_mean") if normalise else 0.0),
        std=_rgb(p.get("image_std") if normalise else 1.0),
        resize_shortest_edge=shape.shortest_edge,
        resize=shape.resize,
        crop=shape.crop,
        rescale=float(p.get("rescale_factor")) if p.get("do_rescale") else 1.0,
        resample=_resample(p.path, p.get("resample")),
    )


def _resample(path: Path, value: Any) -> str:
    # The processor holds Pillow's number for it (None: transformers' bilinear); ImageInput its name.
    try:
        return Image.Resampling(Image.Resampling.BILINEAR if value is None else value).name.lower()
    except ValueError:
        names = ", ".join(f"{r.value} ({r.name.lower()})" for r in Image.Resampling)
        raise SpecError("model", f"{path}: resample {value!r} is not one of Pillow's filters", f"use one of {names}") from None


def _rgb(value: float | list[float]) -> tuple[float, float, float]:
    r, g, b = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    return r, g, b
