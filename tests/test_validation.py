"""Bad input never costs a GPU slot and never crashes a command: each malformed kind ends
`invalid` up front, naming the item and the field, and `manifest validate` lists them all."""

import shutil

import pytest

from command.main import main
from flows.results import read_results
from infra.faults import MALFORMED, careless_manifest, malformed_files, malformed_rows
from manifests.schema import read_table
from tests.conftest import FAST
from tests.scenes import SYNTHETIC

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]
SETS = [a for s in FAST for a in ("--set", s)]


def write_rows(rows: list[dict], path) -> str:
    path.write_bytes(careless_manifest(rows))
    return str(path)


@pytest.fixture
def job(tmp_path):
    folder = tmp_path / "job"
    shutil.copytree(SYNTHETIC.parent, folder)
    for name, data in malformed_files().items():
        (folder / name).write_bytes(data)
    (tmp_path / "outside.png").write_bytes((folder / "translate-disc.png").read_bytes())
    return folder


def broken_manifest(job) -> str:
    good = read_table(str(SYNTHETIC)).to_pylist()
    rows = good + malformed_rows(good[0])
    return write_rows(rows, job / "manifest.parquet")


def test_every_malformed_row_is_invalid_before_any_worker_sees_it(job, tmp_path, tiny_model_dir, capsys):
    manifest, out = broken_manifest(job), tmp_path / "out"
    assert main(["-q", "run", manifest, "--output", str(out), "--model", str(tiny_model_dir), *SETS]) == 1
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err and f"{len(MALFORMED)} invalid, 3 succeeded" in printed.out
    rows = read_results(str(out / "results.parquet"))
    assert len(rows) == 3 + len(MALFORMED)  # one row per manifest row, the id-less one too
    for (item_id, _, expected), row in zip(MALFORMED, rows[3:], strict=True):
        assert row["status"] == "invalid" and row["attempts"] == 0, row
        assert expected in row["error"], (expected, row["error"])
        assert row["item_id"] == (item_id or "<row 3>")
    assert all(r["status"] == "succeeded" for r in rows[:3])
    stored = sorted(p.name for p in (out / "rows").iterdir())
    assert stored == sorted(f"{r['item_id']}.json" for r in rows[:3])  # no bad row reached a worker
    assert not (out / "edited.png").exists() and not (out.parent / "edited.png").exists()
    # a refusal says nothing about whether the file exists
    refusals = {r["item_id"]: r["error"] for r in rows if r["item_id"] in ("abs-path", "abs-missing")}
    assert refusals["abs-path"].replace("hostname", "X").replace("abs-path", "Y") == \
        refusals["abs-missing"].replace("no-such-file", "X").replace("abs-missing", "Y")


def test_manifest_validate_lists_every_bad_row_without_a_traceback(job, capsys):
    manifest = broken_manifest(job)
    assert main(["manifest", "validate", manifest]) == 1
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err
    assert f"{3 + len(MALFORMED)} rows, {len(MALFORMED)} invalid" in printed.out
    for item_id, _, expected in MALFORMED:
        assert f"(item '{item_id}'): {expected}" in printed.out, item_id


def test_a_file_that_is_not_parquet_gets_one_clear_line(tmp_path, tiny_model_dir, capsys):
    fake = tmp_path / "manifest.parquet"
    fake.write_text("item_id,image_uri\na,a.png\n")
    assert main(["manifest", "validate", str(fake)]) == 2
    run = ["-q", "run", str(fake), "--output", str(tmp_path / "o"), "--model", str(tiny_model_dir)]
    assert main(run) == 2
    err = capsys.readouterr().err
    assert err.count(f"dragnext: error: {fake}: not a Parquet file") == 2 and "Traceback" not in err


def test_an_allowed_prefix_lets_a_run_read_images_from_elsewhere(job, tmp_path, tiny_model_dir, capsys):
    good = read_table(str(SYNTHETIC)).to_pylist()[0]
    elsewhere = tmp_path / "library"
    elsewhere.mkdir()
    shutil.copy(job / good["image_uri"], elsewhere / "disc.png")
    manifest = write_rows([{**good, "image_uri": str(elsewhere / "disc.png")}], job / "m.parquet")
    common = ["-q", "run", manifest, "--model", str(tiny_model_dir), *SETS]
    assert main([*common, "--output", str(tmp_path / "refused")]) == 1
    assert main([*common, "--output", str(tmp_path / "allowed"), "--allow-prefix", str(elsewhere)]) == 0
    assert "1 invalid" in capsys.readouterr().out
