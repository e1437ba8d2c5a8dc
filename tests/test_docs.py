"""The README stays short and its links land; the docs' reference pages cover the code.
(`make docs` builds the site with --strict: every page's links, anchors and images.)"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from command.main import parser
from command.reference import cli_reference, config_reference, config_rows
from dragnext.config import EditConfig

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_is_short_and_every_link_in_it_exists():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    local = [link for link in LINK.findall(text) if "://" not in link]
    assert local, "the README links to its docs pages"
    assert [link for link in local if not (ROOT / link).exists()] == []


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert {p for p in pages if f": {p}" not in nav} == set()


def test_every_config_key_is_in_the_reference_with_its_default_and_description():
    page = config_reference()
    record = EditConfig().to_record()
    rows = list(config_rows())
    flat = {}
    for section, value in record.items():
        nested = isinstance(value, dict)
        flat |= {f"{section}.{k}": v for k, v in value.items()} if nested else {section: value}
    assert {key for _, key, *_ in rows} == set(flat)
    for _, key, _, default, _, description in rows:
        assert description, f"{key} has no description in dragnext/config.py"
        assert json.loads(default) == flat[key]
        assert f"| `{key}` |" in page and f"`{default}`" in page


def test_every_subcommand_and_argument_is_in_the_cli_reference():
    page = cli_reference()
    names = []

    def walk(command: argparse.ArgumentParser, name: str) -> None:
        names.append(name)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    walk(child, f"{name} {sub}")
            elif action.option_strings and not isinstance(action, argparse._HelpAction):
                assert f"`{', '.join(action.option_strings)}`" in page, f"{name}: {action.option_strings}"

    walk(parser(), "dragnext")
    assert {"dragnext run", "dragnext manifest validate", "dragnext studio", "dragnext demo"} <= set(names)
    assert [n for n in names if f"## `{n}`" not in page] == []
    assert "/work/" not in page and str(ROOT) not in page  # defaults inside the checkout are relative
    assert "| `--output` | required |" in page and "('translate'" not in page
    assert "report every bad row of a manifest" in page  # a second-level subcommand's own help
