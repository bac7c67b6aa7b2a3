"""MkDocs hook: the CLI reference, read from the typer app at build time.

A page holds the line ``<!-- generated: cli -->``; this hook replaces it with every
command, argument and option of ``tlearn`` as click sees them (typer builds a click
command), so the reference cannot drift from the code. Typer ships its own copy of
click, so commands and parameters are read by their attributes, not their classes.
"""

from __future__ import annotations

import re

MARKER = "<!-- generated: cli -->"

# Typer's rich help: '\[' is a literal bracket, '[bold]...[/]' are tags.
_RICH_TAG = re.compile(r"(?<!\\)\[/?[a-z #]*\]")


def _plain(text: str | None) -> str:
    text = _RICH_TAG.sub("", text or "")
    return text.replace("\\[", "[").strip()


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _command_section(path: list[str], command, parent, sub_commands: bool = True
                     ) -> list[str]:
    ctx = command.context_class(command, info_name=path[-1], parent=parent)
    lines = [f"### `{' '.join(path)}`", ""]
    help_text = _plain(command.help)
    if help_text:
        lines += [help_text, ""]
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines += ["```text", f"{' '.join(path)} {usage}".rstrip(), "```", ""]
    # what `--help` shows: names with their value, then help, default and [required]
    records = [p.get_help_record(ctx) for p in command.params]
    records = [r for r in records if r is not None and not r[0].startswith("--help")]
    if records:
        lines += ["| argument or option | what it does |", "|---|---|"]
        lines += [f"| `{_cell(_plain(names))}` | {_cell(_plain(help_text))} |"
                  for names, help_text in records]
        lines.append("")
    if sub_commands and hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                lines += _command_section([*path, name], sub, ctx)
    return lines


def cli_reference() -> str:
    """Markdown for every command of ``tlearn``, its arguments and options.

    Commands come under the panels ``tlearn --help`` shows them in (Data, Stage 1...),
    in the order they are registered; a group's sub-commands follow it.
    """
    import typer

    from pipeline.cli import app

    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="tlearn")
    # the root: its usage and the options every command takes, heading its own section
    lines = _command_section(["tlearn"], root, None, sub_commands=False)
    lines[0] = "## `tlearn`"
    panels: dict[str, list[str]] = {}
    for name, sub in root.commands.items():
        if not sub.hidden:
            panel = getattr(sub, "rich_help_panel", None) or "Other commands"
            panels.setdefault(panel, []).extend(_command_section(["tlearn", name], sub, ctx))
    for panel, section in panels.items():
        lines += [f"## {panel}", "", *section]
    return "\n".join(lines)


def on_page_markdown(markdown: str, **kwargs) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    return markdown
