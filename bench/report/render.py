"""Render a report :class:`~bench.report.tables.Table` as Markdown, LaTeX (booktabs), HTML or CSV."""
from __future__ import annotations

import html
import itertools

from bench.report.tables import KEY, Table

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "τ": r"$\tau$", "×": r"$\times$", "Δ": r"$\Delta$", "−": r"$-$", "—": "---",
                  "…": r"\dots{}"}


def _groups(table: Table) -> list[tuple[str, int]]:
    """Consecutive column groups as (name, span)."""
    return [(name, len(list(run))) for name, run in itertools.groupby(g for g, _ in table.header)]


def to_markdown(table: Table) -> str:
    """A pipe table; grouped columns are headed 'group: label', bold cells wrapped in **."""
    def cell(text: str) -> str:
        """A pipe-safe cell."""
        return text.replace("|", r"\|")

    head = [cell(f"{g}: {label}" if g != KEY else label) for g, label in table.header]
    align = ["---" if g == KEY else "---:" for g, _ in table.header]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for i, row in enumerate(table.rows):
        lines.append("| " + " | ".join(f"**{cell(t)}**" if (i, j) in table.bold and t else cell(t)
                                        for j, t in enumerate(row)) + " |")
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX table cell (specials escaped, ±, τ, ×, Δ, − as math)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), grouped columns under a ``\\multicolumn``."""
    spec = "".join("l" if g == KEY else "r" for g, _ in table.header)
    lines = [f"% {table.title} (written by bench.py report; needs \\usepackage{{booktabs}})",
             f"\\begin{{tabular}}{{{spec}}}", r"\toprule"]
    groups = _groups(table)
    if any(name != KEY for name, _ in groups):
        cells, rules, start = [], [], 1
        for name, span in groups:
            if name == KEY:
                cells += [""] * span
            else:
                cells.append(f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(name)}}}")
                rules.append(f"\\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        lines += [" & ".join(cells) + r" \\", " ".join(rules)]
    lines += [" & ".join(latex_escape(label) for _, label in table.header) + r" \\", r"\midrule"]
    previous = None
    for i, row in enumerate(table.rows):
        if previous is not None and table.header[0][0] == KEY and row[0] != previous:
            lines.append(r"\addlinespace")
        previous = row[0]
        lines.append(" & ".join(f"\\textbf{{{latex_escape(t)}}}" if (i, j) in table.bold and t else latex_escape(t)
                                for j, t in enumerate(row)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_html(table: Table) -> str:
    """A ``<table>`` with a two-row header when columns are grouped; bold cells in ``<strong>``."""
    out = ['<table class="report">', "<thead>"]
    groups = _groups(table)
    if any(name != KEY for name, _ in groups):
        top, column = [], 0
        for name, span in groups:
            if name == KEY:
                top += [f'<th rowspan="2">{html.escape(label)}</th>' for _, label in
                        table.header[column:column + span]]
            else:
                top.append(f'<th colspan="{span}" class="group">{html.escape(name)}</th>')
            column += span
        out.append("<tr>" + "".join(top) + "</tr>")
        out.append("<tr>" + "".join(f"<th>{html.escape(label)}</th>" for g, label in table.header if g != KEY)
                   + "</tr>")
    else:
        out.append("<tr>" + "".join(f"<th>{html.escape(label)}</th>" for _, label in table.header) + "</tr>")
    out.append("</thead><tbody>")
    for i, row in enumerate(table.rows):
        cells = []
        for j, text in enumerate(row):
            body = html.escape(text)
            if (i, j) in table.bold and text:
                body = f"<strong>{body}</strong>"
            cells.append(f'<td class="{"key" if table.header[j][0] == KEY else "num"}">{body}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def to_csv(table: Table) -> str:
    """The numbers behind the table (not the display strings), one tidy row per cell or row."""
    return table.data.to_csv(index=False)
