"""Griffe extension for the API reference: two docstring habits of the package, read as Markdown.

- Sphinx roles (``:class:`~liegg_lightning.LieGGMetric```, ``:meth:`update```) become
  cross-references (``[`LieGGMetric`][liegg_lightning.LieGGMetric]``) or, for names the site
  does not document, plain code, instead of showing the role's markup.
- A Google-style ``Example:`` section is read as ``Examples:``, so its ``>>>`` lines are shown as
  code rather than run together as a paragraph.

Only the rendered pages change; the package's docstrings are left as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(class|meth|func|attr|mod|exc|data|obj):`(~?)([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
# What the site documents, and where: cross-references to these resolve; others stay code.
LINKED = {
    "liegg_lightning.LieGGCallback": "liegg_lightning.callback.callback.LieGGCallback",
    "liegg_lightning.LieGGMetric": "liegg_lightning.metric.LieGGMetric",
    "liegg_lightning.SymmetryReport": "liegg_lightning.report.SymmetryReport",
    "liegg_lightning.analyze": "liegg_lightning.analyze.analyze",
    "liegg_lightning.GroupAction": "liegg_lightning.actions.GroupAction",
    "liegg_lightning.VectorAction": "liegg_lightning.actions.VectorAction",
    "liegg_lightning.ImageAction": "liegg_lightning.actions.ImageAction",
    "liegg_lightning.SignalAction": "liegg_lightning.actions.SignalAction",
    "liegg_lightning.VolumeAction": "liegg_lightning.actions.VolumeAction",
    "liegg_lightning.TangentAction": "liegg_lightning.actions.TangentAction",
}


def _role(match: re.Match) -> str:
    _, tilde, target = match.groups()
    target = target.strip()
    shown = target.rsplit(".", 1)[-1] if tilde else target
    path = LINKED.get(target, target if target in LINKED.values() else None)
    return f"[`{shown}`][{path}]" if path else f"`{shown}`"


def rewrite(text: str) -> str:
    """The docstring ``text`` with Sphinx roles and ``Example:`` read as Markdown and ``Examples:``."""
    return _EXAMPLE.sub(r"\1Examples:", _ROLE.sub(_role, text))


class DocstringMarkdown(griffe.Extension):
    """Rewrites every docstring of the loaded package before mkdocstrings parses it."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
