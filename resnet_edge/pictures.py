"""What every picture the tool draws shares: matplotlib without a display, and text from data
(specs, paths, reasons, class names) drawn as text."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend: pictures are files, never windows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def literal(text: str) -> str:
    """`text` as text: a `$` in a data spec, path, reason or class name prints as `$` instead of
    starting a formula (or failing on an unbalanced one). Mathtext stays on for the log axes'
    tick labels, which it draws as 10 to a raised power."""
    return text.replace("$", r"\$")
