"""What `xray adapt`, `xray predict --adapt` and evaluate adapt: settings without TensorFlow.

Kept apart from xray/adaptation/adapt.py (which imports Keras) so the command line can read and
check
its options and the model file before TensorFlow starts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdaptSettings:
    """What to adapt (the `adapt` section of params.yaml, or `xray adapt` options)."""

    bn: bool = True  # AdaBN: re-estimate BatchNorm statistics
    tent_steps: int = 0  # TENT steps on BatchNorm scale/shift (0 = off)
    tent_lr: float = 1e-4
    tent_max_shift: float = 0.15  # revert TENT when the positive call rate moves more
    prior: bool = False  # move the threshold by the estimated label shift
    min_images: int = 32  # below this, nothing is adapted (statistics too noisy)
    batch_size: int = 64
    seed: int = 0

    @property
    def method(self) -> str:
        """A short name of the adaptation, e.g. `adabn+tent+prior`, `none`."""
        steps = [
            name
            for name, on in (
                ("adabn", self.bn),
                ("tent", self.tent_steps > 0),
                ("prior", self.prior),
            )
            if on
        ]
        return "+".join(steps) or "none"
