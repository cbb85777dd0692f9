"""The guard: adaptation falls back to the unadapted model when its calls move too far.

After AdaBN, TENT and the threshold move, the adapted calls on the target images are
compared with the unadapted model's calls at its own threshold: the share of images called
alike (agreement) and the change of the share called positive. Either past its bound
(`adapt.guard_min_agreement`, `adapt.guard_max_call_shift`) and the unadapted scores and
threshold are used instead, with the reason in the report. The mean entropy of both is
reported, not judged: adaptation lowers or raises it for good reasons alike.

TENT's own revert rule (xray/adaptation/tent.py) works the same way on the call rate; this
one judges the whole adaptation, and reads no label.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xray.adaptation.scores import call_stats


def guard_check(
    unadapted: tuple[np.ndarray, float],
    adapted: tuple[np.ndarray, float],
    min_agreement: float,
    max_call_shift: float,
) -> dict[str, Any]:
    """Compare the adapted (scores, threshold) with the unadapted ones; `status` says the verdict.

    `status` is `passed`, or `fallback (<reason>)` when the calls agree on fewer than
    `min_agreement` of the images or the share called positive moved more than `max_call_shift`.
    """
    (p0, t0), (p1, t1) = unadapted, adapted
    call0, ent0 = call_stats(p0, t0)
    call1, ent1 = call_stats(p1, t1)
    agreement = float(np.mean((p0 >= t0) == (p1 >= t1)))
    report: dict[str, Any] = {
        "agreement": round(agreement, 6),
        "call_rate_before": round(call0, 6),
        "call_rate_after": round(call1, 6),
        "entropy_before": round(ent0, 6),
        "entropy_after": round(ent1, 6),
    }
    reasons = []
    if agreement < min_agreement:
        reasons.append(
            f"adapted and unadapted calls agree on {agreement:.3f} of the images "
            f"< adapt.guard_min_agreement={min_agreement}"
        )
    if abs(call1 - call0) > max_call_shift:
        reasons.append(
            f"call rate moved {call1 - call0:+.3f} > adapt.guard_max_call_shift={max_call_shift}"
        )
    report["status"] = f"fallback ({'; '.join(reasons)})" if reasons else "passed"
    report["reason"] = "; ".join(reasons) or None
    return report
