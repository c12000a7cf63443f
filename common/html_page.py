"""Self-contained HTML pages (reports people open in a browser): one file, inline CSS / JS / images, no network.

Used by the explainer's evaluation report and the CLI's sweep comparison page.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td.l,th.l{text-align:left}tr.baseline td{color:#666;font-style:italic;background:#fafafa}
tr.good td.verdict{color:#1a7f37;font-weight:600}tr.bad td.verdict{color:#b42318;font-weight:600}
.meta{color:#555;font-size:13px}.charts img{max-width:100%;margin:6px 12px 6px 0;border:1px solid #eee}
.controls{margin:8px 0;font-size:14px}.controls select{margin-right:16px}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px;background:#fff}
.card .tiles{display:flex;gap:4px}.card figure{margin:0;text-align:center;font-size:11px;color:#555}
.card img{display:block;width:128px;height:auto;image-rendering:pixelated}
.card .name{font-size:12px;font-weight:600;margin-bottom:4px;max-width:528px;overflow:hidden;text-overflow:ellipsis}
.card .scores{font-size:12px;margin-top:4px;color:#333}.legend{font-size:12px;color:#555}
.hidden{display:none}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def fmt(value: object) -> str:
    """A table cell: floats to 3 decimals, None as a dash, booleans as yes / no."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, left: int = 1,
          row_classes: Sequence[str] = (), cell_classes: dict[int, str] | None = None) -> str:
    """An HTML table; the first ``left`` columns are left-aligned (names), the rest right-aligned (numbers)."""
    cells = cell_classes or {}

    def cls(i: int) -> str:
        names = (["l"] if i < left else []) + ([cells[i]] if i in cells else [])
        return f' class="{" ".join(names)}"' if names else ""

    head = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for r_i, row in enumerate(rows):
        tr_cls = f' class="{esc(row_classes[r_i])}"' if r_i < len(row_classes) and row_classes[r_i] else ""
        body.append(f"<tr{tr_cls}>" + "".join(f"<td{cls(i)}>{esc(fmt(v))}</td>" for i, v in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, body: str, *, script: str = "") -> str:
    """A complete HTML document (``body`` is trusted HTML built with :func:`esc`)."""
    js = f"<script>{script}</script>" if script else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><style>{_CSS}</style></head>'
            f"<body><h1>{esc(title)}</h1>{body}{js}</body></html>")
