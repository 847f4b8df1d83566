"""The training curve: a PNG written beside each checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_training"]


def plot_training(report: dict[str, Any], path: str | Path) -> Path:
    """Loss per epoch (left axis) and validation HR@10 / NDCG@10 (right axis) of a `train` report."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    epochs = report["epochs"]
    fig, loss_ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    loss_ax.plot([e["epoch"] for e in epochs], [e["loss"] for e in epochs], color="tab:gray", label="train loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    metric_ax = loss_ax.twinx()
    checked = [e for e in epochs if e["valid"]]
    for key, colour in (("ndcg@10", "tab:blue"), ("hr@10", "tab:orange")):
        metric_ax.plot([e["epoch"] for e in checked], [e["valid"][key] for e in checked], color=colour,
                       label=f"valid {key.upper()}")
    metric_ax.axvline(report["best_epoch"], color="tab:green", linestyle=":", label=f"best epoch {report['best_epoch']}")
    metric_ax.set_ylabel("validation metric")
    handles = loss_ax.get_legend_handles_labels()[0] + metric_ax.get_legend_handles_labels()[0]
    metric_ax.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize="small")
    test = report["test"]
    loss_ax.set_title(f"{report['dataset']} ({report['protocol']}): test HR@10 {test['hr@10']:.4f}, "
                      f"NDCG@10 {test['ndcg@10']:.4f}", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
