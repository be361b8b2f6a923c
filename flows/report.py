"""Charts and tables for MLflow and Prefect: the funnel (Markdown, PNG) and dedup cluster sizes.

    md = funnel_markdown(wh.funnel(), wh.rejection_counts())
    figure = funnel_chart(wh.funnel(), title="snapshot ...")        # a matplotlib figure
    figure = cluster_size_chart({2: 10, 3: 1}, title="dedup clusters")
"""

from __future__ import annotations


def funnel_markdown(funnel: list[dict], reasons: list[dict] | None = None) -> str:
    lines = ["| stage | in | out | dropped | quarantined | MB | seconds |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in funnel:
        lines.append(f"| {r['stage']} | {r['docs_in']} | {r['docs_out']} | {r['docs_dropped']} | "
                     f"{r['docs_quarantined']} | {r['bytes'] / 1e6:.2f} | {r['seconds']:.2f} |")
    if reasons:
        lines += ["", "| stage | reason | quarantined | documents |", "|---|---|---|---:|"]
        lines += [f"| {r['stage']} | {r['reason']} | {r['quarantined']} | {r['n']} |" for r in reasons]
    return "\n".join(lines) + "\n"


def funnel_chart(funnel: list[dict], title: str):
    """Horizontal bars per stage: kept, dropped and quarantined documents."""
    import matplotlib  # deferred: ~1 s, and only where a figure is drawn (headless: Agg first)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [r["stage"] for r in funnel][::-1]
    rows = funnel[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(stages) + 1.5))
    kept = [r["docs_out"] for r in rows]
    dropped = [r["docs_dropped"] for r in rows]
    quarantined = [r["docs_quarantined"] for r in rows]
    ax.barh(stages, kept, color="#2b8a3e", label="passed on")
    ax.barh(stages, dropped, left=kept, color="#f08c00", label="dropped")
    ax.barh(stages, quarantined, left=[k + d for k, d in zip(kept, dropped)], color="#c92a2a", label="quarantined")
    ax.set_xlabel("documents")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def cluster_size_chart(sizes: dict, title: str):
    """Bars: how many dedup clusters have each size (2 or more documents)."""
    import matplotlib  # deferred: ~1 s, and only where a figure is drawn (headless: Agg first)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted((int(size), n) for size, n in sizes.items())
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([str(size) for size, _ in counts], [n for _, n in counts], color="#1c7ed6")
    ax.set_xlabel("documents in the cluster")
    ax.set_ylabel("clusters")
    ax.set_title(title if counts else f"{title}: no duplicates")
    fig.tight_layout()
    return fig
