"""`make review-thresholds`: the `review.*` defaults (`dragnext.review`), chosen on the
benchmark's tuning seeds and reported on another seed.

Two kinds of bad edit are scored: DragNeXt's own misses on the benchmark (by default the
strict rule's failures, `--rule strict`: a shape that moved but came out wrong, a colour that
drifted, a ghost left behind), and an edit that did not happen at all (the input returned
unchanged, what a broken model or LoRA gives; scored on every case). The thresholds are
chosen together: for each flag in turn, every threshold just past a tuning case's own value
is tried, with the other flags as chosen so far, and the one kept catches the most bad edits
while every flag together flags at most `--max-flagged-successes` of the successful edits (a
flag on a good edit costs a person a look); two rounds. With the chosen thresholds, the
report seed's cases give what a user can expect: for each flag and for any flag, the share of
misses, of unchanged inputs and of successes flagged. Reads `dragnext bench` results JSON
(their `cases`).

    python -m bench.review_thresholds --tune TUNE.json --report REPORT.json [--method dragnext]
                                      [--tune-method LABEL]
                                      [--rule strict|lenient] [--max-flagged-successes 0.1]
                                      [--json docs/review-thresholds.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.cases import enlarged, make_case
from bench.run import item_of
from dragnext.config import ReviewConfig
from dragnext.metrics import image_fidelity, warp_agreement
from dragnext.metrics.fidelity import DISTANCE
from dragnext.review import review_reasons

# flag → (its reason's opening words, whether it fires above its threshold rather than below)
FLAGS = {"min_drag_gap": ("drag not done", False), "min_if_ed": ("outside changed", False),
         "max_target_err": ("wrong object", True), "max_vacated_residual": ("ghost left", True)}
KINDS = ("misses", "unedited", "successes")
RULES = {"strict": "success_strict", "lenient": "success"}
ROUNDS = 2


def metrics_of(case: dict) -> dict[str, float | None]:
    """A bench case's scores as the metrics a run records (`image_fidelity`'s and
    `warp_agreement`'s keys)."""
    return {**{f"{name}_{DISTANCE}": case[name] for name in ("if_ed", "if_th", "if_hh")},
            "target_err": case.get("target_err"), "vacated_residual": case.get("vacated_residual")}


def unedited(case: dict) -> dict:
    """The case scored as if the edit had returned its input unchanged."""
    name, _, factor = case["case_id"].partition(".x")  # `enlarged` cases end in .xK
    kind, _, seed = name.rpartition("-")
    item = item_of(enlarged(make_case(kind, int(seed)), int(factor or 1)))
    fidelity = image_fidelity(item.image, item.image, item)
    return {"case_id": case["case_id"], "type": case["type"], "success": 0.0, "success_strict": 0.0,
            **{name: fidelity[f"{name}_{DISTANCE}"] for name in ("if_ed", "if_th", "if_hh")},
            **warp_agreement(item.image, item.image, item)}


def populations(cases: list[dict], rule: str = "strict") -> dict[str, list[dict]]:
    good = RULES[rule]
    return {"misses": [c for c in cases if not c[good]], "unedited": [unedited(c) for c in cases],
            "successes": [c for c in cases if c[good]]}


def flagged(case: dict, config: ReviewConfig, flag: str | None = None) -> bool:
    reasons = review_reasons(metrics_of(case), config)
    return any(r.startswith(FLAGS[flag][0]) for r in reasons) if flag else bool(reasons)


def rates(groups: dict[str, list[dict]], config: ReviewConfig, flag: str | None = None) -> dict:
    """The share of each group flagged, and the group sizes."""
    def share(group: list[dict]) -> float | None:
        return round(sum(flagged(c, config, flag) for c in group) / len(group), 4) if group else None

    return {**{kind: share(groups[kind]) for kind in KINDS}, "n": {kind: len(groups[kind]) for kind in KINDS}}


def value(case: dict, flag: str) -> float | None:
    if flag == "min_drag_gap":
        return case["if_th"] - case["if_hh"]
    return case.get({"min_if_ed": "if_ed", "max_target_err": "target_err",
                     "max_vacated_residual": "vacated_residual"}[flag])


def candidates(values: list[float | None], flag: str) -> list[float]:
    """Every way to split the values: midway between each two neighbouring ones (as far from
    the one as from the other), and just past the last one it can fire on (a `min_` flag fires
    below its threshold, a `max_` one above), within the key's bounds."""
    above, top = FLAGS[flag][1], 255.0 if flag == "max_target_err" else 1.0
    seen = sorted({v for v in values if v is not None})
    if not seen:
        return []
    middles = [round((a + b) / 2, 4) for a, b in zip(seen, seen[1:], strict=False)]
    edge = [max(round(seen[0] - 1e-4, 4), 0.0)] if above else [min(round(seen[-1] + 1e-4, 4), top)]
    return sorted(set(middles + edge))


def caught(groups: dict[str, list[dict]], thresholds: dict, max_flagged: float) -> tuple[int, int]:
    """(bad edits flagged, −successes flagged) with these thresholds all on, larger is better;
    (−1, 0) when they flag more of the successes than the budget allows."""
    config = ReviewConfig(**thresholds)
    looks = sum(flagged(c, config) for c in groups["successes"])
    if looks > max_flagged * len(groups["successes"]):
        return -1, 0
    return sum(flagged(c, config) for c in groups["misses"] + groups["unedited"]), -looks


def tune(groups: dict[str, list[dict]], max_flagged: float) -> dict[str, float | None]:
    """The flags' thresholds: the most bad edits caught with every flag on together, within
    the review budget, then the fewest looks at good edits; of thresholds that tie on both, the
    least eager. Each candidate lies midway between two cases (`candidates`): a threshold at
    the good edits' very edge would flag the first photo a little worse than the bench's flat
    colours. A flag is left None when it catches nothing more."""
    cases = [c for kind in KINDS for c in groups[kind]]
    chosen: dict[str, float | None] = dict.fromkeys(FLAGS)
    for _ in range(ROUNDS):
        for flag in FLAGS:
            best, most = None, caught(groups, chosen | {flag: None}, max_flagged)
            # the least eager first, so a tie keeps it: high thresholds of a `max_` flag, low of a `min_`
            for threshold in candidates([value(c, flag) for c in cases], flag)[::-1 if FLAGS[flag][1] else 1]:
                if (n := caught(groups, chosen | {flag: threshold}, max_flagged)) > most:
                    best, most = threshold, n
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
    parser.add_argument("--method", default="dragnext", help="the method's label in the report JSON")
    parser.add_argument("--tune-method", help="its label in the tuning JSON (default: --method)")
    parser.add_argument("--rule", choices=RULES, default="strict", help="which failures are misses")
    parser.add_argument("--max-flagged-successes", type=float, default=0.1)
    parser.add_argument("--json", default="docs/review-thresholds.json")
    args = parser.parse_args()
    tuning, reported = (populations(json.loads(Path(path).read_text())["methods"][method]["cases"], args.rule)
                        for path, method in ((args.tune, args.tune_method or args.method),
                                             (args.report, args.method)))
    chosen = tune(tuning, args.max_flagged_successes)
    config = ReviewConfig(**chosen)
    report = {
        "method": args.method, "tune_method": args.tune_method or args.method, "rule": args.rule,
        "max_flagged_successes": args.max_flagged_successes,
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
