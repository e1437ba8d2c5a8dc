"""`dragnext`'s entry point: every package's subcommands under one parser."""

from __future__ import annotations

import argparse
import sys

from bench import cli as bench_cli
from bench import demo
from bench import profile as profile_cli
from dragnext import cli as library_cli
from flows import cli as flows_cli
from studio import cli as studio_cli

COMMAND_GROUPS = (library_cli.add_commands, demo.add_commands, studio_cli.add_commands,
                  flows_cli.add_commands, bench_cli.add_commands, profile_cli.add_commands)


def parser() -> argparse.ArgumentParser:
    return library_cli.parser(*COMMAND_GROUPS)


def main(argv: list[str] | None = None) -> int:
    return library_cli.main(argv, parser(), flows_cli.EXPECTED_ERRORS, exit_3=flows_cli.EXIT_3)


if __name__ == "__main__":
    sys.exit(main())
