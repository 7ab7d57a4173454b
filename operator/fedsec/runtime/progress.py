"""What a person sees while a local run goes on: a bar per round and the current metrics.

On a terminal, rich draws live bars (answers received of participants expected); elsewhere (CI,
pipes) each round is one plain line, so logs stay readable.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from fedsec.runtime.local import RunLayout


def _fmt_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in ("auc", "accuracy", "loss") if k in metrics)


class Display:
    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.live = self.console.is_terminal and not quiet
        self.progress: Progress | None = None
        self._round_task: TaskID | None = None
        self._rounds_task: TaskID | None = None
        self._participants = 0
        self._join_task: TaskID | None = None

    def start(self, layout: RunLayout) -> None:
        job = layout.job
        if not self.quiet:
            self.console.print(
                f"[bold]{job.metadata.name}[/]: {len(layout.plan.admitted)} sites, quorum {layout.plan.quorum}, "
                f"{job.spec.rounds} rounds, secure aggregation: {job.spec.secure_aggregation.mode}"
            )
            p = job.spec.privacy
            if p.mechanism != "none":
                self.console.print(f"privacy: {p.mechanism}, target epsilon {p.target_epsilon:g} per site at delta {p.delta:g} ({p.accountant})")
            for name, reason in sorted(layout.plan.refused.items()):
                self.console.print(f"[yellow]{escape(name)} refused the job: {escape(reason)}[/]")
            self.console.print(f"run directory: {escape(str(layout.run_dir))}")
        if self.live:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=self.console, transient=False,
            )
            self.progress.start()
            self._join_task = self.progress.add_task("sites joined", total=len(layout.plan.admitted))
            self._rounds_task = self.progress.add_task("rounds", total=job.spec.rounds)

    def privacy(self, section: dict[str, Any]) -> None:
        """After each committed round of a private job: the epsilon the sites have spent so far."""
        from fedsec.privacy.report import one_line

        line = one_line(section)
        if not line or self.quiet:
            return
        if self.progress is not None:
            self.progress.console.print(f"           {escape(line)}")
        else:
            self.console.print(f"           {escape(line)}")

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[yellow]{escape(text)}[/]")

    def event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "site_joined":
            if self.progress is not None and self._join_task is not None:
                self.progress.update(self._join_task, completed=ev["live"])
            return
        if kind == "round_started":
            if self.progress is not None and self._join_task is not None:
                self.progress.remove_task(self._join_task)
                self._join_task = None
            self._participants = len(ev["participants"])
            label = {"stats-scale": "feature scales", "stats": "feature statistics"}.get(
                ev["kind"], f"round {ev['round']}/{ev['rounds']}")
            if ev.get("attempt", 1) > 1:
                label += f" (attempt {ev['attempt']})"
            if self.progress is not None:
                if self._round_task is not None:
                    self.progress.remove_task(self._round_task)
                self._round_task = self.progress.add_task(label, total=self._participants)
        elif kind == "answer" and self.progress is not None and self._round_task is not None:
            self.progress.advance(self._round_task)
        elif kind == "round_committed":
            metrics = ev.get("metrics") or ev.get("site_metrics") or {}
            if ev["kind"] == "stats":
                line = f"feature statistics from {ev['contributors']} sites"
            else:
                line = f"round {ev['round']:>3}/{ev['rounds']}  {ev['contributors']}/{ev['participants']} sites  {_fmt_metrics(metrics)}  ({ev['seconds']:.2f}s)"
            if self.progress is not None:
                if ev["kind"] != "stats" and self._rounds_task is not None:
                    self.progress.update(self._rounds_task, completed=ev["round"], description=f"rounds  {_fmt_metrics(metrics)}")
                if self._round_task is not None:
                    self.progress.remove_task(self._round_task)
                    self._round_task = None
                self.progress.console.print(line)  # stays in the scrollback above the bars
            elif not self.quiet:
                self.console.print(line)
        elif kind == "round_discarded":
            self.note(f"round {ev['round']} attempt {ev['attempt']} discarded: {ev['reason']}")
        elif kind == "rollback":
            self.note(f"rolled back to round {ev['to_round']} (model version {ev['version']})")
        elif kind == "key_epoch" and ev.get("round") is not None:
            self.note(f"keys rotated: epoch {ev['epoch']} from round {ev['round']}")
        elif kind == "job_finished" and not self.quiet and self.progress is None:
            self.console.print(escape(f"job {ev['status']}: {ev['reason']}"))

    def finish(self, summary: dict[str, Any], summary_path: Path | None, run_dir: Path) -> None:
        if self.progress is not None:
            self.progress.stop()
        if summary and not self.quiet:
            table = Table(show_header=False, box=None)
            table.add_row("status", f"[{'green' if summary['status'] == 'Succeeded' else 'red'}]{summary['status']}[/]")
            table.add_row("reason", escape(summary.get("reason", "")))  # data, not markup: a "[...]" in it must show
            table.add_row("rounds", f"{summary['rounds_completed']} of {summary['rounds_planned']} ({summary['round_attempts']} attempts)")
            if summary.get("final_metrics"):
                table.add_row("final", f"{_fmt_metrics(summary['final_metrics'])}  {escape('[' + summary.get('final_metrics_source', '') + ']')}")
            priv = summary.get("privacy") or {}
            if priv.get("mechanism", "none") != "none":
                from fedsec.privacy.report import one_line

                table.add_row("privacy", one_line(priv))
            for name, reason in sorted(priv.get("refused", {}).items()):
                table.add_row("refused", escape(f"{name}: {reason}"))
            keys = summary.get("keys") or {}
            if keys.get("rotate_every_rounds"):
                table.add_row("keys", f"epoch {keys['epoch']} (rotated every {keys['rotate_every_rounds']} rounds)")
            for site, counts in sorted((summary.get("site_refusals") or {}).items()):
                # the site refused Tasks that departed from what it admitted: see its audit log
                table.add_row("[red]site refused[/]", f"{site}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
            if summary.get("rejected_messages"):
                table.add_row("rejected", ", ".join(f"{k}: {v}" for k, v in summary["rejected_messages"].items()))
            table.add_row("plot", summary["artifacts"]["plot"])
            self.console.print(table)
        if summary_path is not None:
            print(f"summary: {summary_path}")  # stdout, last line: scripts read it
        else:
            self.console.print(f"[red]the job left no summary; logs are in {escape(str(run_dir / 'logs'))}[/]")
            print(f"run directory: {run_dir}")
