"""Text from models, recipes and files on its way to a terminal: never markup, never control codes.

Tensor names, file names and messages that quote them are untrusted. Rich would read ``[bold red]`` or
``[link=file:///etc/passwd]`` in them as markup (and crash on ``[/]``); Rich also passes a raw ESC
through, so a name holding ``\\x1b[2J`` or an OSC 8 hyperlink would drive the terminal. :func:`plain`
writes every control and format character (C0/C1 controls, ESC, bidi overrides, zero-width marks) as a
visible escape; :func:`markup` additionally escapes Rich markup, for text inside ``console.print``.
"""

from __future__ import annotations

import unicodedata

_KEEP_NEWLINES = frozenset("\n\t")


def plain(text: object, *, newlines: bool = False) -> str:
    """``text`` with control/format characters escaped (``\\x1b``, ``\\u202e``); keeps line breaks and
    tabs when ``newlines`` (multi-line messages)."""
    s = str(text)
    if s.isprintable():  # no control, format or line-separator character at all (the common case)
        return s
    out = []
    for c in s:
        if newlines and c in _KEEP_NEWLINES:
            out.append(c)
        elif unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            out.append(ascii(c)[1:-1])
        else:
            out.append(c)
    return "".join(out)


def markup(text: object) -> str:
    """``text`` safe inside Rich markup: :func:`plain`, then every ``[`` that could open a tag escaped."""
    from rich.markup import escape

    return escape(plain(text))


__all__ = ["markup", "plain"]
