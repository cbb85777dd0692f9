"""Names of the corruption suite, without its numpy code: what params.yaml may list.

`xray.core.params` validates `corrupt.families` and `corrupt.held_out` against these names,
so an edit to a corruption's code reruns only the stages that run it (corrupt, finetune,
evaluate), never download, split or train_base. `xray.perturbations.corruptions.FAMILIES`
holds the functions, in this order (a test keeps the two equal).
"""

from __future__ import annotations

FAMILY_NAMES: tuple[str, ...] = (
    "seed",
    "pixelate",
    "jpeg",
    "gaussian_noise",
    "speckle_noise",
    "impulse_noise",
    "shot_noise",
    "gaussian_blur",
    "brightness_up",
    "brightness_down",
    "contrast_up",
    "contrast_down",
    "gamma_up",
    "gamma_down",
    "motion_blur",
    "zoom_blur",
    "elastic",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
HELD_OUT: tuple[str, ...] = ("motion_blur", "zoom_blur", "elastic")
"""Evaluated only, never fine-tuned on: does robustness carry over to unseen damage?"""
