"""A griffe extension: fundl's docstrings use a few reST habits; show them as Markdown.

- ``:func:`fundl.io.save``` (and ``:class:``, ``:mod:``, ``:meth:``, ``:attr:``,
  ``:data:``, ``:exc:``, ``:obj:``; a leading ``~`` drops the module path) -> inline code;
- a paragraph ending in ``::`` introduces an indented literal block -> ``:``
  (Markdown already shows the indented block as code).
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"(\S)::[ \t]*$", re.M)
_BARE_LITERAL = re.compile(r"^([ \t]*)::[ \t]*$", re.M)


def markdown(text: str) -> str:
    """``text`` with the reST roles and literal-block markers rewritten."""
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    text = _BARE_LITERAL.sub("", text)
    return _LITERAL.sub(r"\1:", text)


class RstToMarkdown(griffe.Extension):
    """Rewrites every docstring once, as griffe loads it."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
