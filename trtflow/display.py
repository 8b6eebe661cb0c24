"""Text shown on terminals: names from ONNX files made safe, and summaries that build, validate and inspect share.

ONNX node and tensor names are untrusted: they may hold control characters (ANSI escapes), rich markup
(``[red]``) or be kilobytes long. :func:`printable` is :func:`trtflow.terminal.markup` plus a length cap.
Imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

RULE_TEXT = {
    "initializer_overflow": "a weight above fp16's range",
    "initializer_underflow": "a weight below fp16's range",
    "activation": "an activation above data_max",
    "op_type": "the op type",
    "index_arithmetic": "shape/index arithmetic",
    "recipe": "the recipe",
}


def printable(name: object, limit: int = 96) -> str:
    """``name`` made safe for Rich (:func:`trtflow.terminal.markup`), cut to ``limit`` characters."""
    from trtflow.terminal import markup, plain

    text = plain(name)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return markup(text)


def mixed_precision_line(mp: dict[str, Any]) -> str:
    """One line: ``fp16: 5 of 412 nodes kept in fp32 (1 for a weight above fp16's range, 4 for an activation ...)``."""
    counts = mp.get("by_rule") or {}
    why = ", ".join(f"{n} for {RULE_TEXT.get(rule, rule)}" for rule, n in counts.items() if n)
    return (f"{mp.get('precision')}: {mp.get('kept_fp32', 0)} of {mp.get('nodes', '?')} nodes kept in fp32"
            + (f" ({why})" if why else ""))


def mixed_precision_reason(k: dict[str, Any]) -> str:
    """Why one node stayed fp32, e.g. ``weight 'bn.var' max |x| 9.79e+07 > 65504``."""
    rule, tensor = k.get("rule"), printable(k.get("tensor") or "", 60)
    if rule == "initializer_overflow":
        return f"weight '{tensor}' max |x| {k['value']:.3g} > {k['limit']:g}"
    if rule == "initializer_underflow":
        return f"weight '{tensor}' loses {k['value']:.1%} of its magnitude in fp16 (> {k['limit']:.0%})"
    if rule == "activation":
        return f"activation '{tensor}' reaches |x| {k['value']:.3g} > data_max {k['limit']:g}"
    if rule == "index_arithmetic":
        return f"float math on integer values (shapes, indices, counters): '{tensor}' is read as an index"
    if rule == "recipe":
        return "named in mixed_precision.keep_fp32_ops/keep_fp32_nodes"
    return "op type kept in fp32 by default (overflows or computes indices)"
