"""MkDocs hook: turn the reST roles in flame-async's docstrings into API cross-references.

The docstrings are Google style but name other objects with Sphinx roles (``:class:`X```,
``:meth:`~a.b.C.d```), which Markdown renders literally as ``:class:<code>X</code>``. Before
mkdocs-autorefs resolves references (its ``on_env`` runs late), this hook rewrites each role
into an optional autoref to the documented object it names, found among the API reference's
anchors (same page first). Names that are not documented here (``json``, ``yarl.URL``) become
plain code. It also drops the reST literal-block marker ``::`` that ends a paragraph.
"""

from __future__ import annotations

import re
from typing import Any

from mkdocs.structure.files import Files

ROLE = re.compile(r":(?:class|meth|func|attr|data|mod|exc|obj):<code>(?P<name>[^<]+)</code>")
ANCHOR = re.compile(r'id="(?P<id>flame_async(?:\.\w+)*)"')
LITERAL_MARKER = re.compile(r"(?<=\w)::</p>")


def _resolve(name: str, here: set[str], everywhere: set[str]) -> str | None:
    if name in everywhere:
        return name
    for pool in (here, everywhere):
        found = sorted((i for i in pool if i.endswith(f".{name}")), key=lambda i: (len(i), i))
        if found:
            return found[0]
    return None


def on_env(env: Any, /, *, config: Any, files: Files) -> Any:
    pages = [f.page for f in files if f.page is not None and f.page.content]
    anchors = {id(p): {m["id"] for m in ANCHOR.finditer(p.content)} for p in pages}
    everywhere = set().union(*anchors.values()) if anchors else set()
    for page in pages:
        here = anchors[id(page)]

        def link(match: re.Match[str], here: set[str] = here) -> str:
            raw = match["name"].strip()
            name = raw.lstrip("~.").removesuffix("()")
            title = name.rsplit(".", 1)[-1] if raw.startswith("~") else name
            target = _resolve(name, here, everywhere)
            if target is None:
                return f"<code>{title}</code>"
            return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'

        content = ROLE.sub(link, page.content)
        page.content = LITERAL_MARKER.sub(":</p>", content)
    return env
