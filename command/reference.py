"""The docs site's reference pages, generated from the code they describe: the configuration
from its pydantic models, the command line from its argparse parser. A page that is written
by hand drifts from the code; these cannot."""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from command.main import parser
from dragnext.config import EditConfig

ROOT = Path(__file__).resolve().parents[1]


def _relative(value):
    """A default inside the project (the fixture model) as the path a reader's checkout has."""
    text = str(value)
    return text.removeprefix(f"{ROOT}/") if text.startswith(f"{ROOT}/") else value


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in typing.get_args(annotation))
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is list:
        return f"list[{', '.join(_type_name(a) for a in typing.get_args(annotation))}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _bounds(field) -> str:
    found = []
    for rule in field.metadata:
        for name, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(rule, name, None) is not None:
                found.append(f"{sign} {getattr(rule, name)}")
    return ", ".join(found)


def config_rows(model: type[BaseModel] = EditConfig, prefix: str = ""):
    """(section, key, type, default, bounds, description) for every leaf key, depth first."""
    defaults = model()
    for name, field in model.model_fields.items():
        if _is_section(field.annotation):
            yield from config_rows(field.annotation, f"{prefix}{name}.")
            continue
        default = getattr(defaults, name)
        yield (prefix.rstrip("."), f"{prefix}{name}", _type_name(field.annotation), json.dumps(default),
               _bounds(field), field.description or "")


def config_reference() -> str:
    """Every key of the edit configuration with its type, default (the paper's, before a model's
    preset), bounds and description, one table per section."""
    sections = {"": EditConfig} | {name: field.annotation for name, field in EditConfig.model_fields.items()
                                   if _is_section(field.annotation)}
    out = []
    for section, model in sections.items():
        rows = [r for r in config_rows() if r[0] == section]
        title = f"`{section}`" if section else "Top level"
        about = (model.__doc__ or "").strip() if section else ""
        out += [f"## {title}", "", *([" ".join(about.split()), ""] if about else []),
                "| key | type | default | bounds | description |", "|---|---|---|---|---|"]
        out += [f"| `{key}` | {kind} | `{_cell(default)}` | {bounds} | {_cell(about)} |"
                for _, key, kind, default, bounds, about in rows]
        out.append("")
    return "\n".join(out)


def _subcommands(command: argparse.ArgumentParser, name: str, about: str = ""):
    """(name, parser, its one-line help) for the command and every subcommand, depth first."""
    yield name, command, about
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for sub, child in action.choices.items():
                yield from _subcommands(child, f"{name} {sub}", helps.get(sub, ""))


def _default(action: argparse.Action, about: str) -> str:
    """The default as a reader would type it; none where the help already says what it is
    (a sentinel such as `--workers -1`) or where there is none to give."""
    if action.required:
        return "required"
    value = action.default
    if not action.option_strings or value is None or value is False or value == [] \
            or value == argparse.SUPPRESS or "default" in about:
        return ""
    if isinstance(value, (tuple, list)):
        value = ",".join(map(str, value))
    return f"`{_relative(value)}`"


def _option_rows(command: argparse.ArgumentParser):
    formatter = command._get_formatter()
    for action in command._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        flag = ", ".join(action.option_strings) or action.metavar or action.dest
        about = _cell(formatter._expand_help(action) if action.help else "")
        yield f"`{flag}`", _default(action, about), about


def cli_reference() -> str:
    """Every subcommand of `dragnext` with its usage and every argument, default and help."""
    out = []
    for name, command, about in _subcommands(parser(), "dragnext"):
        usage = command.format_usage().removeprefix("usage: ").strip()
        about = command.description or about
        out += [f"## `{name}`", "", *([_cell(about), ""] if about else []), "```text", usage, "```", ""]
        rows = list(_option_rows(command))
        if rows:
            out += ["| argument | default | description |", "|---|---|---|"]
            out += [f"| {flag} | {default} | {about} |" for flag, default, about in rows]
            out.append("")
    return "\n".join(out)
