"""The frame of this tool's self-contained HTML pages (``gallery.html``, ``report.html``): one
file each, its style inline, nothing fetched."""

from __future__ import annotations

from string import Template

_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>$title</title>
<style>"""


def page_template(style: str, body: str) -> Template:
    """A page whose head holds ``$title`` and ``style``, and whose header begins with ``$title``
    as its heading; ``body`` follows that heading and keeps its own ``$`` placeholders."""
    return Template(_HEAD + style + "</style>\n</head>\n<body>\n<header>\n<h1>$title</h1>\n" + body)
