"""report.html: one self-contained page (inline SVG charts, images as data URIs, inline CSS,
no script, nothing fetched), so it opens offline from ``file://`` and can be attached anywhere.
Its bytes depend only on the results and benchmarks read (no timestamps)."""

from __future__ import annotations

import html
from typing import Sequence

from builder.htmlpage import page_template
from builder.report.inputs import Result
from builder.report.sections import Section

esc = html.escape


def render_section(section: Section) -> str:
    state = "shown" if section.shown else "skipped"
    notes = "".join(f'<p class="note">{esc(note)}</p>\n' for note in section.notes)
    if not section.shown:
        notes = '<p class="note skip">This section was skipped.</p>\n' + notes
    return f'<section id="{section.id}" class="part {state}">\n<h2>{esc(section.title)}</h2>\n{notes}{section.body}\n</section>'


def render_page(results: Sequence[Result], sections: Sequence[Section]) -> str:
    """The whole page: what was read, a table of contents that marks skipped sections, the sections."""
    files = list(dict.fromkeys(str(result.source) for result in results))
    contents = "".join(
        f'<li><a href="#{section.id}">{esc(section.title)}</a>{"" if section.shown else " (skipped)"}</li>' for section in sections
    )
    skipped = [section.title for section in sections if not section.shown]
    summary = f"{len(results)} result(s) from {len(files)} file(s)" + (f"; skipped: {', '.join(skipped)} (see each section)" if skipped else "")
    return PAGE.substitute(
        title=esc(f"FMR report: {len(results)} result(s)"),
        summary=esc(summary),
        files="".join(f"<li><code>{esc(name)}</code></li>" for name in files),
        contents=contents,
        sections="\n".join(render_section(section) for section in sections),
    )


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 16px 32px;color:#222;background:#fafafa}
h1{font-size:20px;margin:12px 0 4px}h2{font-size:17px;margin:24px 0 6px;border-bottom:1px solid #ddd}h3{font-size:14px;margin:14px 0 4px}
.note{color:#555;margin:2px 0}.skip{color:#8a5a00;font-weight:bold}.key{color:#888;font-size:11px}
.chart svg{max-width:100%;height:auto;background:#fff}
table.figures{border-collapse:collapse;margin-top:8px;font-size:12px}
table.figures th,table.figures td{border:1px solid #ccc;padding:2px 6px;text-align:left}
table.figures td{overflow-wrap:anywhere}table.figures td:nth-child(n+4):nth-child(-n+9){white-space:nowrap;overflow-wrap:normal}
table.figures td:nth-child(n+5):nth-child(-n+9){text-align:right}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin-top:6px}
.miss{margin:0;padding:5px;background:#fff;border:1px solid #ccc;border-radius:4px;width:max-content}
.pair{display:flex;gap:4px}.miss img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#eee}
figcaption{font-size:12px;margin-top:3px;max-width:196px}.wrong{color:#a31515;font-weight:bold}
"""

PAGE = page_template(
    STYLE,
    """<p class="note">$summary. FMR (Foundation Model-oriented Robustness, Zhang et al.) = PA / SA x 100.</p>
<ul class="files">$files</ul>
<nav><ol>$contents</ol></nav>
</header>
$sections
</body>
</html>
"""
)
