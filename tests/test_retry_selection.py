"""A retry never makes a result worse: a selection's overrides are checked against every
selected item before anything runs, a bad or empty selection is one line and exit 2 with
nothing written, and a succeeded row is replaced only by a re-edit that succeeds."""

import json

import pytest

from command.main import main
from dragnext.config import build_config
from flows.results import read_results
from tasks.plan import make_plan
from tests.conftest import FAST
from tests.scenes import SYNTHETIC

SETS = [a for s in FAST for a in ("--set", s)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """The synthetic manifest run to success once; each test works on a copy of its output."""
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(["-q", "run", str(SYNTHETIC), "--output", str(out), "--model", str(tiny_model_dir),
                 "--workers", "1", *SETS]) == 0
    return out


def snapshot(out) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("selection, message", [
    ({"overrides": {"nope": 1}}, "overrides: for item 'translate-disc': invalid config: nope:"),
    ({"overrides": {"pbsi.lam": -1}}, "overrides: for item 'translate-disc': invalid config: pbsi.lam:"),
    ({"items": []}, "items: List should have at least 1 item"),
    ({"items": ["not-in-the-run"]}, "items: names none of the run's 3 items (e.g. 'not-in-the-run')"),
    ({"items": ["translate-disc", "nope"]}, "items: 1 of them are not items of the run (e.g. 'nope')"),
    ("[" * 100_000 + "]" * 100_000, "is nested too deeply to be a selection"),
])
def test_a_bad_selection_is_one_line_exit_2_and_leaves_the_results_untouched(
        finished_run, selection, message, tmp_path, capsys):
    results = finished_run / "results.parquet"
    before = snapshot(finished_run)
    path = tmp_path / "selection.json"
    body = selection if isinstance(selection, str) else json.dumps(
        {"results_uri": str(results), "items": ["translate-disc"], **selection})
    path.write_text(body)
    capsys.readouterr()
    assert main(["-q", "retry", str(results), "--selection", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert snapshot(finished_run) == before
    assert {r["status"] for r in read_results(str(results))} == {"succeeded"}


def test_a_retry_s_failed_or_invalid_re_edit_keeps_the_succeeded_row(tmp_path):
    base = build_config(overrides=FAST)
    plan = make_plan(str(SYNTHETIC), str(tmp_path / "out"), "fixture/model", "fp", base, {}, item_filter=None)
    rows = plan.merge({}, {})
    succeeded = {r["item_id"]: {**r, "status": "succeeded", "error": None, "image_uri": "x"} for r in rows}
    # the same run retried with a selection over its succeeded items: the re-edits fail
    retry = make_plan(str(SYNTHETIC), str(tmp_path / "out"), "fixture/model", "fp", base, succeeded,
                      item_filter=list(succeeded), item_params={i: {"seed": 3} for i in succeeded})
    merged = retry.merge({"rotate-bar": {**succeeded["rotate-bar"], "image_uri": "new"}},
                         {"deform-bar-end": "shard 0's run crashed"})
    by_id = {r["item_id"]: r for r in merged}
    assert by_id["translate-disc"] == succeeded["translate-disc"]  # kept: its re-edit has no row
    assert by_id["deform-bar-end"] == succeeded["deform-bar-end"]
    assert by_id["rotate-bar"]["image_uri"] == "new"  # a re-edit that succeeded replaces it
    assert set(retry.kept) == {"translate-disc", "deform-bar-end"}
    assert "crashed" in retry.kept["deform-bar-end"]
    # without a selection (the inputs changed, say) a failed re-edit is what the row says
    rerun = make_plan(str(SYNTHETIC), str(tmp_path / "out"), "fixture/model", "fp", base, succeeded,
                      item_filter=list(succeeded))
    assert {r["status"] for r in rerun.merge({}, {})} == {"failed"} and not rerun.kept
