"""`make review-thresholds`: the `review.*` defaults (`dragnext.review`), chosen on the
benchmark's tuning seeds and reported on another seed.

Two kinds of bad edit are scored: DragNeXt's own misses on the benchmark (ground-truth
success false: a shape that moved but came out wrong), and an edit that did not happen at
all (the input returned unchanged, what a broken model or LoRA gives; scored on every
case). For each flag, every threshold just above a tuning case's own value is tried; the
one kept catches the most bad edits of either kind while flagging at most
`--max-flagged-successes` of the successful ones (a flag on a good edit costs a person a
look). With the chosen thresholds, the report seed's cases give what a user can expect:
for each flag and for any flag, the share of misses, of unchanged inputs and of successes
flagged. Reads `dragnext bench` results JSON (their `cases`).

    python -m bench.review_thresholds --tune TUNE.json --report REPORT.json [--method dragnext]
                                      [--max-flagged-successes 0.05] [--json docs/review-thresholds.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.cases import make_case
from bench.run import item_of
from dragnext.config import ReviewConfig
from dragnext.metrics import image_fidelity
from dragnext.metrics.fidelity import DISTANCE
from dragnext.review import review_reasons

FLAGS = {"min_drag_gap": "drag not done", "min_if_ed": "outside changed"}
KINDS = ("misses", "unedited", "successes")


def metrics_of(case: dict) -> dict[str, float | None]:
    """A bench case's scores as the metrics a run records (`image_fidelity`'s keys)."""
    return {f"{name}_{DISTANCE}": case[name] for name in ("if_ed", "if_th", "if_hh")}


def unedited(case: dict) -> dict:
    """The case scored as if the edit had returned its input unchanged."""
    kind, _, seed = case["case_id"].rpartition("-")
    item = item_of(make_case(kind, int(seed)))
    fidelity = image_fidelity(item.image, item.image, item)
    return {"case_id": case["case_id"], "type": case["type"], "success": 0.0,
            **{name: fidelity[f"{name}_{DISTANCE}"] for name in ("if_ed", "if_th", "if_hh")}}


def populations(cases: list[dict]) -> dict[str, list[dict]]:
    return {"misses": [c for c in cases if not c["success"]], "unedited": [unedited(c) for c in cases],
            "successes": [c for c in cases if c["success"]]}


def flagged(case: dict, config: ReviewConfig, flag: str | None = None) -> bool:
    reasons = review_reasons(metrics_of(case), config)
    return any(r.startswith(FLAGS[flag]) for r in reasons) if flag else bool(reasons)


def rates(groups: dict[str, list[dict]], config: ReviewConfig, flag: str | None = None) -> dict:
    """The share of each group flagged, and the group sizes."""
    def share(group: list[dict]) -> float | None:
        return round(sum(flagged(c, config, flag) for c in group) / len(group), 4) if group else None

    return {**{kind: share(groups[kind]) for kind in KINDS}, "n": {kind: len(groups[kind]) for kind in KINDS}}


def value(case: dict, flag: str) -> float | None:
    return case["if_ed"] if flag == "min_if_ed" else case["if_th"] - case["if_hh"]


def tune(groups: dict[str, list[dict]], max_flagged: float) -> dict[str, float | None]:
    """Each flag's threshold: the most bad edits caught within the review budget (None when
    none is caught within it)."""
    bad = groups["misses"] + groups["unedited"]
    chosen = {}
    for flag in FLAGS:
        values = [value(c, flag) for c in bad + groups["successes"]]
        best, best_caught = None, 0
        # just above each value (a flag fires below its threshold), within the key's bounds
        for threshold in sorted({min(round(v + 1e-4, 4), 1.0) for v in values if v is not None}):
            config = ReviewConfig(**{f: None for f in FLAGS} | {flag: threshold})
            alarms = sum(flagged(c, config, flag) for c in groups["successes"])
            caught = sum(flagged(c, config, flag) for c in bad)
            if alarms <= max_flagged * len(groups["successes"]) and caught > best_caught:
                best, best_caught = threshold, caught
        chosen[flag] = best
    return chosen


def by_type(groups: dict[str, list[dict]], config: ReviewConfig) -> dict[str, dict]:
    types = dict.fromkeys(c["type"] for kind in KINDS for c in groups[kind])
    return {t: rates({k: [c for c in groups[k] if c["type"] == t] for k in KINDS}, config) for t in types}


def _share(fraction: float | None, n: int) -> str:
    return "—" if fraction is None else f"{100 * fraction:.0f}% of {n}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", required=True, help="bench results JSON on the tuning seeds")
    parser.add_argument("--report", required=True, help="bench results JSON on the reported seed")
    parser.add_argument("--method", default="dragnext")
    parser.add_argument("--max-flagged-successes", type=float, default=0.05)
    parser.add_argument("--json", default="docs/review-thresholds.json")
    args = parser.parse_args()
    tuning, reported = (populations(json.loads(Path(p).read_text())["methods"][args.method]["cases"])
                        for p in (args.tune, args.report))
    chosen = tune(tuning, args.max_flagged_successes)
    config = ReviewConfig(**chosen)
    report = {
        "method": args.method, "max_flagged_successes": args.max_flagged_successes,
        "tune": args.tune, "report": args.report, "thresholds": chosen,
        "tuning": {"any": rates(tuning, config), **{f: rates(tuning, config, f) for f in FLAGS}},
        "reported": {"any": rates(reported, config), **{f: rates(reported, config, f) for f in FLAGS},
                     "by_type": by_type(reported, config)},
    }
    print(f"thresholds (tuned on {args.tune}): {chosen}")
    print(f"{'on ' + args.report:40s} {'misses':>12s} {'unedited':>12s} {'successes':>12s}")
    rows = [(n, report["reported"][n]) for n in ("any", *FLAGS)] + list(report["reported"]["by_type"].items())
    for name, r in rows:
        print(f"{name:40s} " + " ".join(f"{_share(r[k], r['n'][k]):>12s}" for k in KINDS))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
