"""HTML for the report: each table as an HTML table, SUMMARY.md rendered, one page per experiment.

Snakemake's report shows a ``text/html`` item inline (an iframe) but offers markdown only as a download, so
every table is also written as ``tables/<name>.html`` and every experiment gets ``pages/<experiment>.html``:
its captions, tables and figures together, self-contained (figures embedded), readable on its own in a
browser and inside the Snakemake report. Markdown is rendered by Python-Markdown, the rst captions by
docutils (Snakemake's own renderer).
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from wsimil.io import write_text_atomic

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 14px; line-height: 1.45;
       color: #1a1a1a; max-width: 1200px; margin: 1.5em auto; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table.wsimil { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 12.5px; }
table.wsimil th, table.wsimil td { padding: 3px 8px; border-bottom: 1px solid #e3e3e3; text-align: right;
       white-space: nowrap; }
table.wsimil th { background: #f3f5f8; border-bottom: 2px solid #bbb; }
table.wsimil td:first-child, table.wsimil th:first-child { text-align: left; }
table.wsimil caption { caption-side: top; text-align: left; color: #444; padding-bottom: 4px; max-width: 1000px;
       white-space: normal; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; max-width: 1000px; }
code { background: #f3f3f3; padding: 0 3px; }
"""


def document(title: str, body: str) -> str:
    """A complete HTML page with the report's style."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def table_html(display: pd.DataFrame, caption: str) -> str:
    """A formatted table (strings, as written to the .md) as an HTML ``<table>`` with its caption."""
    import re

    body = display.to_html(index=False, border=0, classes="wsimil", escape=True, na_rep="")
    return re.sub(r"^<table[^>]*>", f'<table class="wsimil"><caption>{html.escape(caption)}</caption>', body, count=1)


def write_table_html(display: pd.DataFrame, path: str | os.PathLike, caption: str, title: str) -> Path:
    path = Path(path)
    write_text_atomic(path, document(title, f"<h1>{html.escape(title)}</h1>\n{table_html(display, caption)}"))
    return path


def markdown_html(text: str) -> str:
    import markdown

    return markdown.markdown(text, extensions=["tables", "fenced_code"], output_format="html")


def rst_html(text: str) -> str:
    from docutils.core import publish_parts

    return publish_parts(text, writer_name="html", settings_overrides={"report_level": 5})["body"]


def figure_html(png: str | os.PathLike, caption_html: str = "") -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(Path(png).stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption_html}</figcaption></figure>")


def _table_fragment(html_path: Path) -> str:
    """The ``<table>`` of a page written by :func:`write_table_html`."""
    text = html_path.read_text()
    start, end = text.find('<table class="wsimil">'), text.rfind("</table>")
    return text[start : end + len("</table>")] if start >= 0 and end >= 0 else ""


def caption_text(text: str, config: Mapping[str, Any] | None) -> str:
    """A report caption with its Jinja placeholders (such as ``{{ snakemake.config["poison"]["strength"] }}``,
    which Snakemake's report fills) filled from ``config``; an unknown key is an error, never a raw placeholder
    on the page."""
    if "{{" not in text and "{%" not in text:
        return text
    if config is None:
        raise ValueError("this caption has snakemake.config placeholders: pass the run's config")
    from jinja2 import Environment, StrictUndefined

    snakemake = type("Snakemake", (), {"config": config})
    env = Environment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
    return env.from_string(text).render(snakemake=snakemake)


def experiment_page(results: str | os.PathLike, name: str, title: str, outputs: Sequence[str],
                    captions: str | os.PathLike | None, intro_md: str | None = None,
                    config: Mapping[str, Any] | None = None) -> Path:
    """``pages/<name>.html``: ``intro_md`` (SUMMARY.md) rendered, then every table (``tables/*.html``) and
    figure (``figures/*.png``) of ``outputs``, in their order, each with its caption (``captions/<stem>.rst``
    where one exists, with its placeholders filled from ``config``)."""
    results = Path(results)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if intro_md is not None:
        parts.append(markdown_html(intro_md))
    for f in outputs:
        path = results / f
        if f.startswith("tables/") and f.endswith(".html"):
            parts.append(f"<h2>{html.escape(path.stem)}</h2>")
            parts.append(_table_fragment(path))
            parts.append(f'<p>Numbers: <code>{html.escape(str(Path(f).with_suffix(".csv")))}</code></p>')
        elif f.startswith("figures/") and f.endswith(".png"):
            rst = Path(captions) / f"{path.stem}.rst" if captions else None
            cap = rst_html(caption_text(rst.read_text(), config)) if rst is not None and rst.is_file() else ""
            parts.append(f"<h2>{html.escape(path.stem)}</h2>")
            parts.append(figure_html(path, cap))
    out = results / "pages" / f"{name}.html"
    write_text_atomic(out, document(title, "\n".join(parts)))
    return out
