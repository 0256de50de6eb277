"""One table model rendered three ways: Markdown, LaTeX (booktabs) and HTML.

A :class:`Grid` holds already formatted cell text plus a mark per cell (``"best"`` is set in bold,
``"second"`` underlined, as in HEST-Benchmark's README), so every format shows the same digits.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_SYMBOLS = {
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "·": r"$\cdot$",
    "–": "--",
    "−": "-",
    "†": r"$^\dagger$",
}
MISSING = "–"


def latex_escape(text: str) -> str:
    """Escapes LaTeX special characters and maps ``±``, ``Δ``, ``·`` to math symbols."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    for sym, rep in _LATEX_SYMBOLS.items():
        out = out.replace(sym, rep)
    return out


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value: float | None, decimals: int) -> str:
    """Fixed-point number, or ``–`` for a missing value.

    A value that rounds to zero prints without a sign (``0.000``, never ``-0.000``).
    """
    if _missing(value):
        return MISSING
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def fmt_pm(mean: float | None, std: float | None, decimals: int) -> str:
    """``mean ± std``; ``mean`` alone without a std; one ``–`` without a mean."""
    if _missing(mean):
        return MISSING
    if _missing(std):
        return fmt(mean, decimals)
    return f"{fmt(mean, decimals)} ± {fmt(std, decimals)}"


def fmt_ci(low: float | None, high: float | None, decimals: int) -> str:
    """``[low, high]``, or one ``–`` when the interval is missing."""
    if _missing(low) or _missing(high):
        return MISSING
    return f"[{fmt(low, decimals)}, {fmt(high, decimals)}]"


def fmt_p(value: float | None) -> str:
    """A p-value with three significant digits, or ``–``."""
    if _missing(value):
        return MISSING
    return f"{value:.3g}"


@dataclass
class Grid:
    """A rendered table: header, rows of cell text, and a mark per cell.

    Attributes:
        title: Table title (Markdown heading, LaTeX caption, HTML caption).
        header: Column names.
        rows: Cell text per row.
        marks: ``"best"``, ``"second"`` or ``""`` per cell (same shape as ``rows``).
        note: One-sentence description printed under the title.
        align: ``l`` or ``r`` per column.
        footer: Footnotes printed under the table (one per line), empty for none.
    """

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    marks: list[list[str]] = field(default_factory=list)
    note: str = ""
    align: list[str] = field(default_factory=list)
    footer: list[str] = field(default_factory=list)

    def add(self, cells: list[str], marks: list[str] | None = None) -> None:
        """Appends a row (marks default to none)."""
        self.rows.append(cells)
        self.marks.append(marks or [""] * len(cells))

    def _align(self) -> list[str]:
        return self.align or ["l"] * len(self.header)

    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown: best in ``**bold**``, second ``<u>underlined</u>``."""
        wrap = {"best": "**{}**", "second": "<u>{}</u>", "": "{}"}
        sep = ["---:" if a == "r" else "---" for a in self._align()]
        lines = [f"## {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(h.replace("|", r"\|") for h in self.header) + " |")
        lines.append("| " + " | ".join(sep) + " |")
        for cells, marks in zip(self.rows, self.marks, strict=True):
            txt = [wrap[m].format(c.replace("|", r"\|")) for c, m in zip(cells, marks, strict=True)]
            lines.append("| " + " | ".join(txt) + " |")
        if self.footer:
            lines += ["", *[f"{f}  " for f in self.footer]]
        return "\n".join(lines) + "\n"

    def to_latex(self, label: str) -> str:
        """A ``table`` float with a booktabs ``tabular``; best bold, second underlined."""
        wrap = {"best": r"\textbf{{{}}}", "second": r"\underline{{{}}}", "": "{}"}
        lines = [
            r"\begin{table}[ht]",
            r"\centering",
            rf"\caption{{{latex_escape(self.title)}. {latex_escape(self.note)}}}",
            rf"\label{{tab:{label}}}",
            r"\begin{tabular}{" + "".join(self._align()) + "}",
            r"\toprule",
            " & ".join(latex_escape(h) for h in self.header) + r" \\",
            r"\midrule",
        ]
        for cells, marks in zip(self.rows, self.marks, strict=True):
            txt = [wrap[m].format(latex_escape(c)) for c, m in zip(cells, marks, strict=True)]
            lines.append(" & ".join(txt) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines += [rf"\par\footnotesize {latex_escape(f)}" for f in self.footer]
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"

    def to_html(self, table_id: str) -> str:
        """An HTML ``<table>`` with a caption; best ``<b>``, second ``<u>``."""
        wrap = {"best": "<b>{}</b>", "second": "<u>{}</u>", "": "{}"}
        align = self._align()
        out = [f'<table id="{table_id}"><caption>{html.escape(self.title)}</caption><thead><tr>']
        out += [f"<th>{html.escape(h)}</th>" for h in self.header]
        out.append("</tr></thead><tbody>")
        for cells, marks in zip(self.rows, self.marks, strict=True):
            out.append("<tr>")
            for c, m, a in zip(cells, marks, align, strict=True):
                cls = ' class="num"' if a == "r" else ""
                out.append(f"<td{cls}>{wrap[m].format(html.escape(c))}</td>")
            out.append("</tr>")
        out.append("</tbody></table>")
        out += [f'<p class="note footer">{html.escape(f)}</p>' for f in self.footer]
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        return note + "".join(out)
