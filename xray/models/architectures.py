"""Model architectures and self-contained, byte-stable model files.

Every model takes grayscale pixels as stored (H x W x 1, values 0..255) at its input
size and rescales them itself (with `train.normalize: equalize`, through xray's one
registered layer, xray/models/equalize.py); it ends in one sigmoid unit, P(positive class). The
decision threshold, class names and input size travel inside the ``.keras`` file
(an ``xray.json`` member), so anyone can load it and predict.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import keras
from keras import layers

from xray.core.io import work_dir, write_bytes_atomic
from xray.models.equalize import Equalize
from xray.models.model_file import META_MEMBER, ModelFileError, read_meta

__all__ = ["META_MEMBER", "ModelFileError", "build_model", "load_model", "read_meta", "save_model"]
MAX_REASON_CHARS = 200
"""Longest loader message kept in a one-line error."""
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
SEED_FILTERS = (64, 128, 256, 256)
SEED_DENSE = (128, 64)
SEED_DROPOUT = 0.2
XRAY_NET_STEM = (24, 32)
XRAY_NET_WIDTHS = (64, 128, 256)
XRAY_NET_DROPOUT = 0.3
BN_MOMENTUM = 0.9  # small data: BatchNorm statistics must settle within a few epochs


NORMALIZE = ("none", "standardize", "equalize")


def crop_side(image_size: int, crop: float) -> int:
    """The side of the input's centre that the model reads when `crop` of each side is cut."""
    return max(1, round(image_size * (1.0 - 2.0 * crop)))


def _input(image_size: int, crop: float) -> tuple[Any, Any]:
    """The pixels input and, with `crop`, its centre (built-in CenterCrop): borders unseen."""
    inputs = keras.Input((image_size, image_size, 1), name="pixels")
    if not crop:
        return inputs, inputs
    side = crop_side(image_size, crop)
    return inputs, layers.CenterCrop(side, side, name="crop")(inputs)


def _intensity(inputs: Any, normalize: str) -> Any:
    """Pixels 0..255 to the network's scale: /255, or each image to zero mean, unit variance.

    `standardize` makes the model blind to an image's overall exposure and contrast (a
    linear change of its gray levels), the largest difference between X-ray sites, with a
    built-in layer (no custom code in the model file). `equalize` first maps each image's
    gray levels through its own histogram's CDF (xray/models/equalize.py; after the crop, so
    borders do not weigh): blind to any monotone change of gray levels, which is how sites'
    processing LUTs, exposure and contrast differ.
    """
    if normalize == "equalize":
        inputs = Equalize(name="equalize")(inputs)
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    if normalize == "standardize":
        x = layers.LayerNormalization(
            axis=(1, 2, 3), center=False, scale=False, epsilon=1e-3, name="standardize"
        )(x)
    elif normalize not in NORMALIZE:
        raise ValueError(f"train.normalize: unknown {normalize!r} (known: {', '.join(NORMALIZE)})")
    return x


def seed_cnn(image_size: int, normalize: str = "none", crop: float = 0.0) -> keras.Model:
    """The blog's 4-block CNN (valid 3x3 convs, BatchNorm, dense 128-64, dropout 0.2)."""
    inputs, x = _input(image_size, crop)
    x = _intensity(x, normalize)
    for i, filters in enumerate(SEED_FILTERS, start=1):
        x = layers.Conv2D(filters, 3, activation="relu", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(SEED_DENSE, start=1):
        x = layers.Dense(units, activation="relu", name=f"dense{i}")(x)
        x = layers.Dropout(SEED_DROPOUT, name=f"dropout{i}")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="prob", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def _conv_bn(x: Any, filters: int, name: str, strides: int = 1) -> Any:
    """3x3 conv, BatchNorm, ReLU."""
    x = layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _sep_block(x: Any, filters: int, name: str) -> Any:
    """Two separable 3x3 convs and a max-pool, plus a strided 1x1 projection shortcut."""
    shortcut = layers.Conv2D(filters, 1, strides=2, use_bias=False, name=f"{name}_proj")(x)
    shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    y = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sep1")(x)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sep2")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
    y = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def xray_net(image_size: int, normalize: str = "none", crop: float = 0.0) -> keras.Model:
    """A small residual separable-conv CNN with global pooling, sized for a 2-core CPU.

    Two strided 3x3 convs take the input to 1/4 resolution cheaply, three residual
    separable blocks halve it again each, global average pooling replaces the seed's
    1.6M-weight dense layer. About 0.19M weights.
    """
    inputs, x = _input(image_size, crop)
    x = _intensity(x, normalize)
    for i, width in enumerate(XRAY_NET_STEM, start=1):
        x = _conv_bn(x, width, f"stem{i}", strides=2)
    for i, width in enumerate(XRAY_NET_WIDTHS, start=1):
        x = _sep_block(x, width, f"block{i}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(XRAY_NET_DROPOUT, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="prob", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="xray_net")


CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # ResNet50's ImageNet preprocessing
BACKBONE_DROPOUT = 0.2


def _efficientnet_b0(x: Any, weights: str | None) -> keras.Model:
    """EfficientNetB0 (rescales 0..255 itself)."""
    return keras.applications.EfficientNetB0(include_top=False, weights=weights, input_tensor=x)


def _resnet50(x: Any, weights: str | None) -> keras.Model:
    """ResNet50 after its caffe-style mean subtraction (grayscale: channel order moot)."""
    x = layers.Normalization(mean=CAFFE_MEAN_BGR, variance=(1.0, 1.0, 1.0), name="caffe_norm")(x)
    return keras.applications.ResNet50(include_top=False, weights=weights, input_tensor=x)


def _mobilenet_v3_small(x: Any, weights: str | None) -> keras.Model:
    """MobileNetV3Small (rescales 0..255 itself)."""
    return keras.applications.MobileNetV3Small(
        include_top=False, weights=weights, input_tensor=x, include_preprocessing=True
    )


BACKBONES = {
    "efficientnet_b0": _efficientnet_b0,
    "resnet50": _resnet50,
    "mobilenet_v3_small": _mobilenet_v3_small,
}


def backbone_model(arch: str, image_size: int, weights: str | None = None) -> keras.Model:
    """A Keras Applications backbone: grayscale tiled to 3 channels inside, GAP, sigmoid head.

    The backbone's layers are part of the returned model (not one nested layer), so
    fine-tuning can freeze and unfreeze them by name.
    """
    inputs = keras.Input((image_size, image_size, 1), name="pixels")
    x = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    base = BACKBONES[arch](x, weights)
    x = layers.GlobalAveragePooling2D(name="gap")(base.output)
    x = layers.Dropout(BACKBONE_DROPOUT, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="prob", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=arch)


ARCHS = {"seed_cnn": seed_cnn, "xray_net": xray_net}
ARCH_NAMES = (*ARCHS, *BACKBONES)


def build_model(
    arch: str,
    image_size: int,
    weights: str | None = None,
    normalize: str = "none",
    crop: float = 0.0,
) -> keras.Model:
    """Build an architecture by name; `weights` ('imagenet' or None) for backbones only."""
    if arch in BACKBONES:
        if normalize != "none":
            raise ValueError(f"train.normalize: {arch} has its own input preprocessing (use none)")
        if crop:
            raise ValueError(f"train.crop: {arch} takes the whole image (use 0)")
        return backbone_model(arch, image_size, weights)
    if arch not in ARCHS:
        raise ValueError(
            f"train.arch: unknown architecture {arch!r} (known: {', '.join(ARCH_NAMES)})"
        )
    if weights is not None:
        raise ValueError(f"train.weights: {arch} has no pretrained weights (use null)")
    return ARCHS[arch](image_size, normalize, crop)


def _renumber_shared_ids(config: Any, ids: dict[int, int] | None = None) -> Any:
    """Replace Keras' `shared_object_id`s (Python object ids, new in every process) by 1, 2, ...

    The ids only link the places that share one object, so numbering them in order of
    first appearance keeps their meaning and makes config.json identical across runs.
    """
    ids = {} if ids is None else ids
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "shared_object_id" and isinstance(value, int):
                out[key] = ids.setdefault(value, len(ids) + 1)
            else:
                out[key] = _renumber_shared_ids(value, ids)
        return out
    if isinstance(config, list):
        return [_renumber_shared_ids(v, ids) for v in config]
    return config


def save_model(model: keras.Model, path: Path, meta: dict[str, Any]) -> None:
    """Save a .keras file with `meta` inside, byte-stable: fixed zip times, no save date."""
    with work_dir("save-model") as folder:
        tmp = folder / "model.keras"
        model.save(tmp)
        buf = io.BytesIO()
        with zipfile.ZipFile(tmp) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in sorted(src.infolist(), key=lambda i: i.filename):
                data = src.read(info)
                if info.filename == "metadata.json":
                    md = json.loads(data)
                    md.pop("date_saved", None)
                    data = json.dumps(md, sort_keys=True).encode()
                elif info.filename == "config.json":
                    data = json.dumps(_renumber_shared_ids(json.loads(data))).encode()
                dst.writestr(zipfile.ZipInfo(info.filename, ZIP_EPOCH), data)
            dst.writestr(
                zipfile.ZipInfo(META_MEMBER, ZIP_EPOCH), json.dumps(meta, indent=2, sort_keys=True)
            )
    write_bytes_atomic(path, buf.getvalue())


def _short(e: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = " ".join(str(e).split())
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _shape_problem(model: keras.Model, size: int) -> str | None:
    """Why the loaded model does not fit its metadata's input size, or None."""
    want_in, want_out = (None, size, size, 1), (None, 1)
    try:
        got_in, got_out = tuple(model.input_shape), tuple(model.output_shape)
    except (AttributeError, TypeError, ValueError) as e:
        return f"no single input and output ({_short(e)})"
    if got_in != want_in:
        return f"input shape {got_in} does not match image_size {size} in {META_MEMBER}"
    if got_out != want_out:
        return f"output shape {got_out} is not one probability {want_out}"
    return None


def load_model(path: Path) -> tuple[keras.Model, dict[str, Any]]:
    """Load a model in Keras' safe mode, with its checked metadata.

    Any problem is a ModelFileError (a ValueError) of one line naming the file: not found,
    not a zip, not our format, bad metadata, a config Keras' safe mode refuses (e.g. one
    naming os.system or a lambda), an input size other than the metadata's.
    """
    meta = read_meta(path)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:
        raise ModelFileError(f"{path}: cannot load the model ({_short(e)})") from None
    if why := _shape_problem(model, int(meta["image_size"])):
        raise ModelFileError(f"{path}: {why}")
    return model, meta
