"""MkDocs hook: fills the reference pages from the code (`command/reference.py`)."""

from command.reference import cli_reference, config_reference

MARKERS = {"<!-- dragnext:config-reference -->": config_reference,
           "<!-- dragnext:cli-reference -->": cli_reference}


def on_page_markdown(markdown: str, page, config, files) -> str:
    for marker, generate in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown
