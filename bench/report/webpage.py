"""A self-contained ``index.html`` per suite: every table and figure (PNG as base64 data URIs, no external
assets) with a short note on how to read each.

A small script marks the page ``data-report-ready="yes"`` once every image has decoded (naturalWidth > 0) and
every table is present, so a headless browser test can tell a complete page from a broken one.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass

from bench.report.plots import Plot
from bench.report.render import to_html
from bench.report.tables import Table

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; }
.meta { color: #555; } .note { color: #444; max-width: 60rem; } nav ul { columns: 2; }
table.report { border-collapse: collapse; font-size: 0.86rem; margin: 0.6rem 0; }
table.report th, table.report td { border: 1px solid #d0d0d0; padding: 0.2rem 0.5rem; }
table.report th { background: #f2f2f2; } table.report th.group { text-align: center; }
table.report td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.report tbody tr:nth-child(even) { background: #fafafa; }
.scroll { overflow-x: auto; } figure { margin: 0.6rem 0; } figure img { max-width: 100%; height: auto; }
.files { font-size: 0.8rem; color: #666; }
"""

SCRIPT = """
function reportReady() {
  const images = Array.from(document.images);
  const expected = Number(document.body.dataset.expectedImages);
  const tables = document.querySelectorAll("table.report").length;
  const ok = images.length === expected && images.every((i) => i.complete && i.naturalWidth > 0)
    && tables === Number(document.body.dataset.expectedTables);
  document.body.dataset.reportReady = ok ? "yes" : "no";
  document.getElementById("report-state").textContent = ok ? "complete" : "incomplete";
}
window.addEventListener("load", reportReady);
"""


@dataclass
class Section:
    """One table or figure of the page, or a note that something could not be shown."""

    anchor: str
    title: str
    note: str
    table: Table | None = None
    plot: Plot | None = None
    files: str = ""


def inline_markdown(text: str) -> str:
    """HTML for a sentence written in Markdown (the headline's and the notes'): escaped, then `code`, **bold** and
    *emphasis* rendered, so the page shows what summary.md means rather than its asterisks and backticks."""
    escaped = html.escape(text, quote=False)
    parts = re.split(r"(`[^`]+`)", escaped)
    for i, part in enumerate(parts):
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            parts[i] = f"<code>{part[1:-1]}</code>"
        else:
            part = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", part)
            parts[i] = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<em>\1</em>", part)
    return "".join(parts)


def _section(section: Section) -> str:
    """One section: heading, note, then the table, the embedded image or nothing."""
    parts = [f'<section id="{html.escape(section.anchor)}">', f"<h2>{html.escape(section.title)}</h2>",
             f'<p class="note">{inline_markdown(section.note)}</p>']
    if section.table is not None:
        parts.append(f'<div class="scroll">{to_html(section.table)}</div>')
    if section.plot is not None:
        data = base64.b64encode(section.plot.png).decode("ascii")
        parts.append(f'<figure><img alt="{html.escape(section.plot.title)}" src="data:image/png;base64,{data}">'
                     "</figure>")
    if section.files:
        parts.append(f'<p class="files">{html.escape(section.files)}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def page(title: str, facts: list[str], sections: list[Section], headline: list[str] | None = None) -> str:
    """The whole HTML document: a heading, a line of facts, the headline (what the suite found, in sentences), a
    table of contents and the sections."""
    images = sum(s.plot is not None for s in sections)
    tables = sum(s.table is not None for s in sections)
    toc = "".join(f'<li><a href="#{html.escape(s.anchor)}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "\n".join(_section(s) for s in sections)
    facts_html = "<br>".join(html.escape(f) for f in facts)
    found = ('<section id="headline"><h2>What this suite found</h2><ul>'
             + "".join(f"<li>{inline_markdown(line)}</li>" for line in headline) + "</ul></section>\n"
             ) if headline else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
            f'<body data-expected-images="{images}" data-expected-tables="{tables}" data-report-ready="pending">\n'
            f"<h1>{html.escape(title)}</h1>\n<p class=\"meta\">{facts_html}<br>Page state: "
            f'<span id="report-state">loading</span></p>\n{found}<nav><ul>{toc}</ul></nav>\n{body}\n'
            f"<script>{SCRIPT}</script>\n</body></html>\n")
