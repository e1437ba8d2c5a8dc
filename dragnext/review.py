"""Flags for bulk review: which succeeded edits a person should look at, from each edit's
own metrics (SPEC §4's image fidelity; no ground truth is needed):

    drag not done:    IF_th − IF_hh < review.min_drag_gap   the content looks more like it
                                                            stayed at the handle than
                                                            arrived at the target
    outside changed:  IF_ed < review.min_if_ed              the picture changed outside the
                                                            editable mask M
    wrong object:     target_err > review.max_target_err    the object arrived, but not as
                                                            the input's moved by the drag
                                                            (shape or colour drifted)
    ghost left:       vacated_residual                      what the object vacated still
                        > review.max_vacated_residual       looks as it did

(`target_err` and `vacated_residual`: `dragnext.metrics.warp_agreement`.)

A flag never changes an item's status: the edit succeeded and its outputs exist; the flag
says where to look first. Outputs that cannot be right at all (non-finite latents, a flat
image) are not flagged but failed (`dragnext.output_check`). The thresholds' defaults and
how often each flag fires on the benchmark's failures and successes are in
docs/review-thresholds.json (`bench/review_thresholds.py`).
"""

from __future__ import annotations

from dragnext.config import ReviewConfig
from dragnext.metrics.fidelity import DISTANCE


def review_reasons(metrics: dict[str, float | None], config: ReviewConfig) -> list[str]:
    """Why an edit needs review, from its metrics (`image_fidelity`'s and `warp_agreement`'s);
    empty when it does not."""
    if_ed, if_th, if_hh = (metrics.get(f"{name}_{DISTANCE}") for name in ("if_ed", "if_th", "if_hh"))
    reasons = []
    if config.min_drag_gap is not None and if_th is not None and if_hh is not None \
            and if_th - if_hh < config.min_drag_gap:
        reasons.append(f"drag not done: IF_th - IF_hh = {if_th - if_hh:.3f} < {config.min_drag_gap}")
    if config.min_if_ed is not None and if_ed is not None and if_ed < config.min_if_ed:
        reasons.append(f"outside changed: IF_ed = {if_ed:.3f} < {config.min_if_ed}")
    target_err, residual = metrics.get("target_err"), metrics.get("vacated_residual")
    if config.max_target_err is not None and target_err is not None and target_err > config.max_target_err:
        reasons.append(f"wrong object: target_err = {target_err:.1f} > {config.max_target_err}")
    if config.max_vacated_residual is not None and residual is not None \
            and residual > config.max_vacated_residual:
        reasons.append(f"ghost left: vacated_residual = {residual:.3f} > {config.max_vacated_residual}")
    return reasons
