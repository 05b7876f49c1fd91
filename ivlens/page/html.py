"""Markup of the report: one self-contained HTML page (inline CSS, a few lines of inline JS to sort tables,
figures as ``data:`` URIs). No request leaves the page: no CDN script, font or stylesheet.

Blocks are plain strings of HTML; every function escapes the text it is given.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

PAPER_URL = "https://arxiv.org/abs/2602.07930"


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


@dataclass
class Section:
    """One section of the page: ``id`` (the anchor), ``title`` and its blocks of HTML, in order."""

    id: str
    title: str
    blocks: list[str] = field(default_factory=list)

    def add(self, *blocks: str) -> Section:
        self.blocks.extend(b for b in blocks if b)
        return self


def inline(text: str) -> str:
    """``text`` escaped, with spans in backticks set as ``<code>``."""
    parts = esc(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def para(text: str, cls: str | None = None) -> str:
    """A paragraph of :func:`inline` text."""
    return f'<p class="{cls}">{inline(text)}</p>' if cls else f"<p>{inline(text)}</p>"


def note(text: str) -> str:
    return para(text, "note")


def caveat(text: str) -> str:
    return para(text, "caveat")


def heading(text: str, level: int = 3) -> str:
    return f"<h{level}>{esc(text)}</h{level}>"


def links(files: Sequence[tuple[str, str]]) -> str:
    """``[(label, relative href)]`` as links (the data behind a figure or table)."""
    return ", ".join(f'<a href="{esc(href)}">{esc(label)}</a>' for label, href in files)


def figure(png: bytes, caption: str, data: Sequence[tuple[str, str]] = (), alt: str | None = None) -> str:
    """An embedded PNG with a caption that says what it shows and links the tables behind it."""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    src = f' Data: {links(data)}.' if data else ""
    return (f'<figure><img src="{uri}" alt="{esc(alt or caption)}">'
            f"<figcaption>{inline(caption)}{src}</figcaption></figure>")


def _cell(v: object) -> tuple[str, str]:
    """``(display text, sort key)`` of one cell."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–", ""
    if isinstance(v, bool):
        return ("yes" if v else "no"), str(int(v))
    if isinstance(v, float):
        text = f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.3f}"
        return text, repr(v)
    if isinstance(v, int):
        return str(v), str(v)
    return str(v), str(v)


def table(df: pd.DataFrame, caption: str | None = None, data: Sequence[tuple[str, str]] = (),
          max_rows: int = 400) -> str:
    """A sortable table (click a column header); numbers sort as numbers. Longer tables keep the first
    ``max_rows`` rows and say so (the linked Parquet has them all)."""
    shown = df.head(max_rows).copy()
    for c in shown.columns:  # integer columns that gained a NaN (and so became float) print as integers
        col = shown[c]
        if col.dtype.kind == "f" and col.isna().any() and col.notna().any() and (col.dropna() % 1 == 0).all():
            shown[c] = col.astype("Int64").astype(object).where(col.notna(), None)
    head = "".join(f"<th>{esc(c)}</th>" for c in shown.columns)
    body = []
    for row in shown.itertuples(index=False):
        cells = []
        for v in row:
            text, key = _cell(v.item() if hasattr(v, "item") else v)
            num = ' class="num"' if isinstance(v, int | float) and not isinstance(v, bool) else ""
            cells.append(f'<td data-sort="{esc(key)}"{num}>{esc(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = inline(caption) if caption else ""
    if data:
        cap += f" Data: {links(data)}."
    if len(df) > len(shown):
        cap += f" First {len(shown)} of {len(df)} rows."
    cap_html = f'<p class="tcap">{cap.strip()}</p>' if cap else ""
    return (f'<div class="tablewrap">{cap_html}<table class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def definition_list(items: Sequence[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


CSS = """
:root { --fg:#1d2329; --muted:#5b6670; --line:#d7dde3; --accent:#1f5fa8; --bg:#fff; --soft:#f4f6f8; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
header { padding: 1.4rem 2rem 0.6rem; border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 .3rem; font-size: 1.55rem; }
header p { margin: .2rem 0; color: var(--muted); }
header p .warn { color: #b3261e; }
nav { padding: .5rem 2rem; border-bottom: 1px solid var(--line); background: var(--soft); position: sticky; top: 0;
      z-index: 2; display: flex; flex-wrap: wrap; gap: .2rem 1.1rem; }
nav a { color: var(--accent); text-decoration: none; font-weight: 600; white-space: nowrap; }
main { padding: 0 2rem 3rem; max-width: 1500px; }
section { border-bottom: 1px solid var(--line); padding: 1rem 0 1.4rem; }
h2 { font-size: 1.3rem; margin: .6rem 0 .5rem; }
h3 { font-size: 1.05rem; margin: 1.2rem 0 .4rem; }
p { max-width: 62rem; }
p.note { color: var(--muted); font-style: italic; }
p.caveat { border-left: 4px solid #c98a00; background: #fff8e6; padding: .5rem .8rem; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .86em; }
pre { background: var(--soft); padding: .6rem .8rem; overflow-x: auto; white-space: pre-wrap; }
figure { margin: .8rem 0 1.4rem; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .9rem; max-width: 62rem; margin-top: .3rem; }
.tablewrap { overflow-x: auto; margin: .5rem 0 1.2rem; }
table { border-collapse: collapse; font-size: .85rem; }
p.tcap { color: var(--muted); font-size: .9rem; margin: .2rem 0 .4rem; }
th, td { border: 1px solid var(--line); padding: .2rem .5rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th { background: var(--soft); cursor: pointer; user-select: none; vertical-align: bottom; }
td { overflow-wrap: break-word; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; overflow-wrap: anywhere; }
"""

#: Click a header to sort its table; numbers (data-sort parses as a number) sort numerically.
JS = """
document.querySelectorAll("table.sortable").forEach(function (t) {
  t.querySelectorAll("th").forEach(function (th, i) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      t.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[i].getAttribute("data-sort"), y = b.cells[i].getAttribute("data-sort");
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def page(title: str, subtitle: Sequence[str], sections: Sequence[Section]) -> str:
    """The whole page: header, a bar of links to the sections, the sections."""
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{"".join(s.blocks)}</section>'
                   for s in sections)
    sub = "".join(f"<p>{line}</p>" for line in subtitle)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1>{sub}</header><nav>{nav}</nav><main>{body}</main>"
            f"<script>{JS}</script></body></html>\n")
