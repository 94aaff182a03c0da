"""The benchmarks' own plots: bench.stopping's rule comparison and bench.presets' preset
comparison (aimo eval's plots stay with aimo_lib.evaluation, whose matplotlib set-up these
share). Without matplotlib a plot is skipped: None instead of a path."""

from __future__ import annotations

from aimo_lib.evaluation import pyplot, save_figure

__all__ = ["plot_presets", "plot_stopping"]


def plot_stopping(rows: list[dict], path: str, title: str, target: tuple[float, float] | None
                  = (50.0, 99.0)) -> str | None:
    """The stopping-rule comparison: tokens saved (%) against agreement with the full vote (%),
    one point per rule and mode (rows: {"label": the rule, "group": how samples are started,
    "tokens_saved", "agreement"} in percent, optional "agreement_ci": (low, high) drawn as
    error bars). Colour: the group; marker: the rule. `target`: the corner a rule must reach
    (tokens saved, agreement), shaded."""
    plt = pyplot()
    if plt is None:
        return None
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(7.5, 5))
    groups = list(dict.fromkeys(r.get("group", "") for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    markers = "osD^v<>PX*hH8p"
    for r in rows:
        ci = r.get("agreement_ci")
        yerr = None if ci is None else [[r["agreement"] - ci[0]], [ci[1] - r["agreement"]]]
        ax.errorbar(r["tokens_saved"], r["agreement"], yerr=yerr, capsize=2, elinewidth=0.8,
                    fmt=markers[labels.index(r["label"]) % len(markers)], markersize=6,
                    color=f"C{groups.index(r.get('group', ''))}", alpha=0.85)
    if target is not None:
        ax.fill_between([target[0], 100], target[1], 100.5, color="green", alpha=0.08)
    lows = [r.get("agreement_ci", (r["agreement"],))[0] for r in rows]
    ax.set(xlim=(0, 100), ylim=(max(0.0, min(lows) - 1), 100.5), xlabel="tokens saved (%)",
           ylabel="agreement with the full vote (%)", title=title)
    handles = [Line2D([], [], color=f"C{i}", lw=6, label=g or "rules")
               for i, g in enumerate(groups)]
    handles += [Line2D([], [], color="grey", ls="", marker=markers[i % len(markers)], label=lab)
                for i, lab in enumerate(labels)]
    if target is not None:
        handles.append(Line2D([], [], color="green", alpha=0.3, lw=6, label=f"target: >= "
                              f"{target[0]:g}% saved at >= {target[1]:g}% agreement"))
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    return save_figure(plt, fig, path)


def plot_presets(rows: list[dict], path: str, title: str) -> str | None:
    """The preset comparison: accuracy (%) against tokens per problem, one point per arm
    (rows: {"label", "accuracy", "tokens"}, optional "accuracy_ci": (low, high) in percent,
    drawn as error bars, and "seconds" written beside the label)."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, r in enumerate(rows):
        ci = r.get("accuracy_ci")
        yerr = None if ci is None else [[r["accuracy"] - ci[0]], [ci[1] - r["accuracy"]]]
        ax.errorbar(r["tokens"], r["accuracy"], yerr=yerr, fmt="o", capsize=4, color=f"C{i}",
                    label=r["label"])
        note = r["label"] + (f", {r['seconds']:.2f} s" if "seconds" in r else "")
        ax.annotate(note, (r["tokens"], r["accuracy"]), fontsize=7, rotation=30,
                    xytext=(4, 6 if i % 2 == 0 else -14), textcoords="offset points")
    ax.set(ylim=(0, 100), xlim=(0, max(r["tokens"] for r in rows) * 1.25),
           xlabel="tokens generated per problem", ylabel="accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(plt, fig, path)
