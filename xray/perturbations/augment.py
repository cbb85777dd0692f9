"""Training augmentation for acquisition differences: pose, optics, exposure, contrast, noise.

One pass per batch, compiled with XLA: a rotation/zoom/translation by gather (nearest
neighbour by default, as torchvision's RandomRotation; bilinear on request), then
blur/sharpen, contrast, brightness, gamma and noise, fused. The blurred copy of each
image is the same every epoch, so `prepare` computes it once, beside the decoded image in
the in-memory cache; only its per-image blend weight is drawn on the fly.

Randomness is stateless: every draw of a batch comes from one key. The tf.data pipeline
gives each batch its own key from a seeded stream that changes every epoch
(xray.models.dataset.make_dataset); a direct call without a key draws one from the layer's seed.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

AUGMENT = {
    "rotation": 0.03,  # fraction of a full turn (0.03 = +-10.8 degrees)
    "zoom": 0.1,
    "translation": 0.05,
    "contrast": 0.3,
    "brightness": 0.2,
    "gamma": 0.3,  # log-gamma range: exposure curve differences
    "blur": 1.0,  # blend toward a 5x5 Gaussian blur (and up to half as much sharpening)
    "noise": 0.03,  # max per-image noise standard deviation, 0..1 pixel scale
}
BLUR_SIGMA = 1.2
BLUR_RADIUS = 2
DRAWS = 10  # per-image uniform draws: see the indices in AcquisitionAugment._augment
BYTE_SD = float(np.sqrt((256**2 - 1) / 12.0))  # sd of a uniform byte: noise of unit sd
PREPARE_CHUNK = 256  # images per compiled blur call in prepare()
INTERPOLATIONS = ("nearest", "bilinear")  # bilinear costs about 1.4x the CPU per image


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """A normalized 1-D Gaussian (2*radius+1 taps): the blur runs as two separable passes."""
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    g = np.exp(-(t**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def _blur(x: Any, taps: np.ndarray) -> Any:
    """Separable blur of (N, H, W, 1) floats, edges mirrored, as shifted slices (XLA fuses)."""
    import tensorflow as tf

    h, w, r = x.shape[1], x.shape[2], len(taps) // 2
    p = tf.pad(x, [[0, 0], [r, r], [0, 0], [0, 0]], "SYMMETRIC")
    x = sum(float(t) * p[:, k : k + h] for k, t in enumerate(taps))
    p = tf.pad(x, [[0, 0], [0, 0], [r, r], [0, 0]], "SYMMETRIC")
    return sum(float(t) * p[:, :, k : k + w] for k, t in enumerate(taps))


def _sample(image: Any, sx: Any, sy: Any, bilinear: bool) -> Any:
    """(N, H, W, 1) floats of `image` (N, H, W, 1) at source coordinates sx, sy (N, H, W).

    Coordinates are already clamped into the image (edges replicated, like fill_mode
    "nearest"). A flat gather: compiled by XLA, bilinear takes a third of the CPU time of
    ImageProjectiveTransformV3 for the same result, and nearest two thirds of that.
    """
    import tensorflow as tf

    n, h, w = tf.shape(image)[0], image.shape[1], image.shape[2]
    flat = tf.reshape(tf.cast(image, tf.float32), [-1])
    base = (tf.range(n) * (h * w))[:, None, None]
    if not bilinear:
        near = base + tf.cast(sy + 0.5, tf.int32) * w + tf.cast(sx + 0.5, tf.int32)
        return tf.gather(flat, near)[..., None]
    x0, y0 = tf.floor(sx), tf.floor(sy)
    fx, fy = sx - x0, sy - y0
    xi, yi = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    right = tf.cast(xi < w - 1, tf.int32)
    down = tf.cast(yi < h - 1, tf.int32) * w
    i00 = base + yi * w + xi
    a, b = tf.gather(flat, i00), tf.gather(flat, i00 + right)
    c, d = tf.gather(flat, i00 + down), tf.gather(flat, i00 + down + right)
    top, bottom = a + fx * (b - a), c + fx * (d - c)
    return (top + fy * (bottom - top))[..., None]


class AcquisitionAugment(keras.layers.Layer):
    """On-the-fly augmentation for acquisition differences, one compiled pass per batch.

    Per image: rotation, zoom and translation (one resampling), a blend toward
    the blurred copy (blur) or away from it (sharpen), contrast about the image mean,
    brightness, gamma, then noise. Takes 0..255 pixels, either (N, H, W, 1) or the
    (N, H, W, 2) uint8 of `prepare` (image and blurred copy); returns (N, H, W, 1) floats
    in 0..255. Identity outside training.
    """

    def __init__(
        self,
        strength: float = 1.0,
        seed: int = 0,
        ranges: dict[str, float] | None = None,
        interpolation: str = "nearest",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.strength, self.seed = float(strength), int(seed)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"augmentation interpolation: {interpolation!r}; known {list(INTERPOLATIONS)}"
            )
        self.interpolation = interpolation
        unknown = set(ranges or {}) - set(AUGMENT)
        if unknown:
            raise ValueError(
                f"augmentation ranges: unknown {sorted(unknown)}; known {list(AUGMENT)}"
            )
        self.base_ranges = {**AUGMENT, **(ranges or {})}
        self.ranges = {k: v * self.strength for k, v in self.base_ranges.items()}
        self.taps = gaussian_kernel(BLUR_SIGMA, BLUR_RADIUS)
        self._compiled: dict[str, Any] = {}

    def get_config(self) -> dict[str, Any]:
        """Layer config (strength, seed, interpolation; ranges when not the defaults)."""
        config = {
            **super().get_config(),
            "strength": self.strength,
            "seed": self.seed,
            "interpolation": self.interpolation,
        }
        return config if self.base_ranges == AUGMENT else {**config, "ranges": self.base_ranges}

    def _jit(self, name: str, fn: Any) -> Any:
        """`fn` compiled with XLA, one per layer (traced again per input shape)."""
        import tensorflow as tf

        if name not in self._compiled:
            self._compiled[name] = tf.function(fn, jit_compile=True, autograph=False)
        return self._compiled[name]

    def _with_blur(self, images: Any) -> Any:
        """(N, H, W, 1) 0..255 -> (N, H, W, 2) uint8: each image and its blurred copy."""
        import tensorflow as tf

        x = tf.cast(images, tf.float32)
        blurred = tf.clip_by_value(tf.round(_blur(x, self.taps)), 0.0, 255.0)
        return tf.cast(tf.concat([tf.round(x), blurred], axis=-1), tf.uint8)

    def prepare(self, images: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The cache form of uint8 images (N, H, W, 1): (N, H, W, 2), image and blurred copy.

        Written into `out` (such as a np.memmap of a cache file) when given.
        """
        out = np.zeros((*images.shape[:3], 2), np.uint8) if out is None else out
        run = self._jit("prepare", self._with_blur)
        for i in range(0, len(images), PREPARE_CHUNK):
            chunk = np.asarray(images[i : i + PREPARE_CHUNK])
            out[i : i + len(chunk)] = run(chunk).numpy()
        return out

    def _augment(self, prepared: Any, draws: Any, bits: Any) -> Any:
        """The augmented batch from prepared images, uniform draws (DRAWS, N) and noise bits."""
        import tensorflow as tf

        r = self.ranges
        n, h, w = tf.shape(prepared)[0], prepared.shape[1], prepared.shape[2]
        hf, wf = float(h), float(w)

        def uniform(k: int, lo: float, hi: float) -> Any:
            return lo + (hi - lo) * draws[k]

        def per_image(v: Any) -> Any:
            return tf.reshape(v, [-1, 1, 1, 1])

        image, blurred = prepared[..., :1], prepared[..., 1:]
        # contrast is about the mean of the source image (the warp moves it very little)
        mean = tf.reduce_mean(tf.cast(image, tf.float32), axis=[1, 2, 3], keepdims=True)
        # rotation, zoom and translation about the centre: output (j, i) <- source (sx, sy)
        theta = uniform(1, -1.0, 1.0) * (2.0 * np.pi * r["rotation"])
        scale = uniform(2, 1.0 - r["zoom"], 1.0 + r["zoom"])  # source pixels per output pixel
        tx = uniform(3, -1.0, 1.0) * r["translation"] * wf
        ty = uniform(4, -1.0, 1.0) * r["translation"] * hf
        cos = (tf.cos(theta) * scale)[:, None, None]
        sin = (tf.sin(theta) * scale)[:, None, None]
        cx, cy = (wf - 1.0) / 2.0, (hf - 1.0) / 2.0
        jj = tf.range(wf)[None, None, :] - cx
        ii = tf.range(hf)[None, :, None] - cy
        sx = tf.clip_by_value(cos * jj - sin * ii + (cx + tx[:, None, None]), 0.0, wf - 1.0)
        sy = tf.clip_by_value(sin * jj + cos * ii + (cy + ty[:, None, None]), 0.0, hf - 1.0)
        x = _sample(image, sx, sy, self.interpolation == "bilinear") * (1.0 / 255.0)
        if r["blur"] > 0:  # the blurred copy is smooth: its nearest sample is enough
            top = min(r["blur"], 1.0)
            soft = _sample(blurred, sx, sy, bilinear=False) * (1.0 / 255.0)
            x = x + per_image(uniform(5, -0.5 * top, top)) * (soft - x)
        c = per_image(uniform(6, 1.0 - r["contrast"], 1.0 + r["contrast"]))
        brightness = per_image(uniform(7, -r["brightness"], r["brightness"]))
        x = x * c + (mean * (1.0 / 255.0) * (1.0 - c) + brightness)
        if r["gamma"] > 0:  # exp(g * log x): tf.pow with a tensor exponent costs more
            x = tf.clip_by_value(x, 1e-6, 1.0)
            x = tf.exp(tf.math.log(x) * per_image(tf.exp(uniform(8, -r["gamma"], r["gamma"]))))
        if r["noise"] > 0:
            # four uniform bytes from every random 32-bit word: a quarter of the generator
            # work of a float normal field, scaled to the same standard deviation
            words = bits.shape[1]
            noise = tf.reshape(tf.bitcast(bits, tf.uint8), [n, 4 * words])[:, : h * w]
            noise = (tf.cast(tf.reshape(noise, [n, h, w, 1]), tf.float32) - 127.5) / BYTE_SD
            x = x + per_image(uniform(9, 0.0, r["noise"])) * noise
        return tf.clip_by_value(x, 0.0, 1.0) * 255.0

    def call(self, images: Any, training: bool = True, key: Any = None) -> Any:
        """Augment a batch when training; `key` (2 int64) seeds every draw of the batch."""
        import tensorflow as tf

        if not training:
            return images
        if images.shape[-1] == 1:
            images = self._jit("prepare", self._with_blur)(images)
        if key is None:
            key = tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int64, seed=self.seed + 10)
        n, h, w = tf.shape(images)[0], images.shape[1], images.shape[2]
        key = tf.cast(key, tf.int64)
        draws = tf.random.stateless_uniform([DRAWS, n], seed=key)
        bits = tf.random.stateless_uniform(
            [n, (h * w + 3) // 4], seed=key + 1, minval=None, maxval=None, dtype=tf.uint32
        )
        return self._jit("augment", self._augment)(images, draws, bits)


def augmenter(
    seed: int,
    strength: float = 1.0,
    ranges: dict[str, float] | None = None,
    interpolation: str = "nearest",
) -> AcquisitionAugment:
    """The training augmentation; `strength` scales every range (0 = identity).

    `ranges` overrides single entries of AUGMENT; a range of 0 skips that operation.
    """
    return AcquisitionAugment(strength, seed, ranges, interpolation, name="augment")
