"""What a finished job leaves behind: ``summary.json`` and a plot of its metrics per round."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsec.storage.atomic import write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    from fedsec.runtime.aggregator import Aggregator

SUMMARY = "summary.json"
PLOT = "metrics.png"


def build_summary(agg: Aggregator) -> dict[str, Any]:
    store, spec, state = agg.store, agg.spec, agg.engine.state
    metas = [store.get(v).meta for v in store.versions()]
    history = [
        {
            "round": m["round"],
            "round_id": m.get("round_id"),
            "kind": m.get("kind"),
            "version": m["version"],
            "participants": m.get("participants", []),
            "contributors": m.get("contributors", []),
            "metrics": m.get("metrics", {}),
            "site_metrics": m.get("site_metrics", {}),
            "seconds": m.get("seconds"),
            "key_epoch": m.get("key_epoch", 0),
            **({"rollback_of": m["rollback_of"], "reason": m.get("reason")} if m.get("kind") == "rollback" else {}),
        }
        for m in metas
        if m.get("kind") != "initial"
    ]
    latest = metas[-1] if metas else {}
    final = latest.get("metrics") or latest.get("site_metrics") or {}
    joined: dict[str, int] = {s: 0 for s in agg.cfg.sites}
    for m in metas:
        if m.get("kind") == "train":
            for c in m.get("contributors", []):
                joined[c] = joined.get(c, 0) + 1
    states = agg.engine.site_states()
    return {
        "job": agg.job.metadata.name,
        "namespace": agg.job.metadata.namespace,
        "job_uid": agg.cfg.job_uid,
        "status": state.status,
        "reason": state.reason,
        "rounds_planned": spec.rounds,
        "rounds_completed": max(0, int(latest.get("round", 0))),
        "round_attempts": state.attempts_total,
        "model_version": agg.version,
        "final_metrics": {k: final[k] for k in ("auc", "accuracy", "loss") if k in final},
        "final_metrics_source": "holdout" if latest.get("metrics") else "sites' validation (model before the last round)",
        "main_metric": spec.evaluation.main_metric,
        "quorum": agg.cfg.quorum,
        "history": history,
        "clients": {s: {"rounds_joined": joined.get(s, 0), "status": states.get(s, "unseen")} for s in sorted(joined)},
        "rejected_messages": dict(sorted(agg.history.rejected.items())),
        "keys": {"epoch": agg.key_epoch, "rotate_every_rounds": agg.rotation.every_rounds,
                 "grace_rounds": agg.rotation.grace_rounds},
        "secure_aggregation": {
            "mode": agg.mode.info.name,
            "server_sees_individual_updates": agg.mode.info.server_sees_individual_updates,
        },
        "artifacts": {
            "model": str(store.dir / f"v{agg.version:06d}" / "model.safetensors"),
            "checkpoints": str(store.dir),
            "audit_log": str(agg.audit.path),
            "plot": str(agg.cfg.state_dir / PLOT),
            "summary": str(agg.cfg.state_dir / SUMMARY),
        },
    }


def write_summary(agg: Aggregator) -> dict[str, Any]:
    summary = build_summary(agg)
    write_json_atomic(agg.cfg.state_dir / SUMMARY, summary)
    return summary


def write_plot(summary: dict[str, Any], path: Path) -> None:
    """Holdout metrics per round (and the sites' validation metrics, dashed), with rollbacks marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [h for h in summary["history"] if h["kind"] in ("train", "rollback")]
    fig, (ax_q, ax_l) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    x = list(range(1, len(rows) + 1))
    labels = [str(h["round"]) for h in rows]
    for key, color in (("auc", "tab:blue"), ("accuracy", "tab:green")):
        for source, style in (("metrics", "-"), ("site_metrics", "--")):
            ys = [h[source].get(key) for h in rows]
            if any(y is not None for y in ys):
                name = f"{key} ({'holdout' if source == 'metrics' else 'sites, start of round'})"
                ax_q.plot(x, [float("nan") if y is None else y for y in ys], style, color=color, marker="o", ms=3, label=name)
    for source, style in (("metrics", "-"), ("site_metrics", "--")):
        ys = [h[source].get("loss") for h in rows]
        if any(y is not None for y in ys):
            ax_l.plot(x, [float("nan") if y is None else y for y in ys], style, color="tab:red", marker="o", ms=3,
                      label=f"loss ({'holdout' if source == 'metrics' else 'sites, start of round'})")
    for i, h in enumerate(rows, start=1):
        if h["kind"] == "rollback":
            for ax in (ax_q, ax_l):
                ax.axvline(i, color="grey", linestyle=":", label="rollback" if ax is ax_q else None)
    for ax, title in ((ax_q, "AUC and accuracy"), (ax_l, "loss")):
        ax.set_xlabel("committed round")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if x:
            step = max(1, len(x) // 12)
            ax.set_xticks(x[::step], labels[::step])
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"{summary['job']}: {summary['status']} after {summary['rounds_completed']} rounds "
                 f"({summary['secure_aggregation']['mode']})")
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, png.getvalue(), mode=0o644)
