"""Secure aggregation versus plaintext FedAvg: CPU seconds and bytes per round, side by side.

Runs whole rounds in one process, every client and the server driven through the same pure state
machines the round engine drives, and measures with ``time.process_time`` around each call
(so a busy machine changes the wall clock, not the figures):

- client CPU: building the client protocol plus answering every phase (mean over the clients that
  stayed to the end); server CPU: every request built, answer taken and phase closed;
- bytes a client sends (its answers) and the server sends (its requests), protocol payloads only:
  envelopes (header, signature, certificate: about 0.6 kB per message) come on top of both modes,
  four messages per round under secagg against one in plaintext;
- the floor: one quantization of the update plus k + 1 AES-CTR expansions of the vector (the self
  mask and one pairwise mask per neighbour), timed in the same run;
- dropout: that fraction of the clients drops, spread evenly over the four phases.

Identity certificates are verified once per process and cached, as a long-lived client does; the
per-round Ed25519 signatures on the key adverts are counted.

    .venv/bin/python benchmarks/secagg_bench.py            # the full grid (several minutes)
    .venv/bin/python benchmarks/secagg_bench.py --quick    # n=10,100; d=1e4,1e5; sparse only
    .venv/bin/python benchmarks/secagg_bench.py --n 100 --d 100000 --graph sparse --dropout 0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from fedsec.aggregation.base import (  # noqa: E402
    ClientUpdate,
    NextPhase,
    PeerIdentity,
    RoundContext,
    TensorSpec,
)
from fedsec.aggregation.plaintext import PlaintextMode  # noqa: E402
from fedsec.aggregation.secagg import PHASES, SecAggConfig, SecAggMode  # noqa: E402
from fedsec.aggregation.secagg.config import auto_degree, fixed_point  # noqa: E402
from fedsec.crypto.pki import issue_signing, new_ca  # noqa: E402
from fedsec.crypto.secagg.prg import Expander  # noqa: E402
from fedsec.crypto.signing import Signer, Verifier  # noqa: E402

cpu = time.process_time


def identities(n: int) -> dict[str, PeerIdentity]:
    ca = new_ca("bench")
    verifier = Verifier(ca.cert_pem)
    out = {}
    for i in range(n):
        name = f"site-{i:04d}"
        mat = issue_signing(ca, name, epoch=1)
        signer = Signer(mat.key_pem, mat.cert_pem)
        verifier.identity(signer.cert_der)  # warm the per-process certificate cache
        out[name] = PeerIdentity(name, signer.cert_der, signer.sign, verifier.verify_peer)
    return out


@dataclass
class Measure:
    client_cpu: float  # seconds, mean per client that finished
    client_bytes: float  # mean per client that finished
    server_cpu: float
    server_bytes: int
    ok: bool
    note: str = ""


def drop_plan(names: tuple[str, ...], fraction: float, phases: tuple[str, ...]) -> dict[str, str]:
    count = int(round(fraction * len(names)))
    step = len(names) / count if count else 0
    chosen = [names[int(i * step)] for i in range(count)]
    return {c: phases[i % len(phases)] for i, c in enumerate(chosen)}


def run(mode, ctx: RoundContext, ident, updates, drop_at: dict[str, str], phases: tuple[str, ...]) -> Measure:
    c_cpu = dict.fromkeys(ctx.participants, 0.0)
    c_bytes = dict.fromkeys(ctx.participants, 0)
    s_cpu, s_bytes = 0.0, 0
    t0 = cpu()
    server = mode.server(ctx)
    s_cpu += cpu() - t0
    clients = {}
    for c in ctx.participants:
        t0 = cpu()
        clients[c] = mode.client(ctx, ident[c], updates[c])
        c_cpu[c] += cpu() - t0
    while True:
        phase = server.phase
        t0 = cpu()
        expected = sorted(server.expected())
        s_cpu += cpu() - t0
        for c in expected:
            stop = drop_at.get(c)
            if stop is not None and phases.index(phase) >= phases.index(stop):
                continue
            t0 = cpu()
            request = server.request_for(c)
            s_cpu += cpu() - t0
            s_bytes += len(request)
            t0 = cpu()
            body = clients[c].respond(phase, request)
            c_cpu[c] += cpu() - t0
            c_bytes[c] += len(body)
            t0 = cpu()
            server.receive(c, body)
            s_cpu += cpu() - t0
        t0 = cpu()
        outcome = server.close_phase()
        s_cpu += cpu() - t0
        if not isinstance(outcome, NextPhase):
            break
    finishers = [c for c in ctx.participants if c not in drop_at]
    return Measure(
        statistics.fmean(c_cpu[c] for c in finishers),
        statistics.fmean(c_bytes[c] for c in finishers),
        s_cpu,
        s_bytes,
        ok=type(outcome).__name__ == "Finished",
        note=getattr(outcome, "reason", ""),
    )


def floor_cpu(d: int, k: int, n: int, delta: np.ndarray, samples: int = 20) -> float:
    """One quantization plus k + 1 AES-CTR expansions of the d + 1 ring words: the unavoidable work.

    Averaged over ``samples`` runs, as the client figure is averaged over clients, so that both
    see the same share of whatever else the machine is doing.
    """
    fixed = fixed_point(SecAggConfig(), n)
    out = np.empty(d + 1, dtype=fixed.dtype)
    mask = Expander(d + 1, fixed.dtype)
    total = 0.0
    for r in range(samples):
        t0 = cpu()
        fixed.encode(delta, 0.5, out[:d])
        for i in range(k + 1):
            mask(bytes([r % 256, i % 256, i // 256]) + bytes(29))  # expansion only: no accumulation
        total += cpu() - t0
    return total / samples


def best(measures: list[Measure]) -> Measure:
    """Least CPU over repetitions: the figure least disturbed by whatever else the machine runs."""
    first = measures[0]
    return Measure(
        min(m.client_cpu for m in measures), first.client_bytes, min(m.server_cpu for m in measures),
        first.server_bytes, all(m.ok for m in measures), "; ".join(sorted({m.note for m in measures if m.note})),
    )


def bench(n: int, d: int, graph: str, dropout: float, ident, deltas, reps: int) -> dict:
    names = tuple(sorted(ident)[:n])
    specs = (TensorSpec("w", (d,)),)
    ctx = RoundContext("bench-job", 1, names, 1, specs, b"round-seed")
    updates = {c: ClientUpdate({"w": deltas[i % len(deltas)]}, float(100 + i)) for i, c in enumerate(names)}
    if graph == "complete":
        config = SecAggConfig(neighbours="complete", weight_bound=float(100 + n))
    else:
        config = SecAggConfig(neighbours=min(auto_degree(n), n - 1 - (n - 1) % 2), complete_graph_max=1,
                              weight_bound=float(100 + n))
    mode = SecAggMode(config)
    k = mode.server(ctx).params.degree
    plain_mode = PlaintextMode()
    secs, plains, floors = [], [], []
    # Interleaved, so a burst of load elsewhere hits all three alike; the first repetition only
    # warms up (the process's heap grows to this size and stops page-faulting) and is dropped.
    for _ in range(reps + 1):
        secs.append(run(mode, ctx, ident, updates, drop_plan(names, dropout, PHASES), PHASES))
        plains.append(run(plain_mode, ctx, ident, updates, drop_plan(names, dropout, ("update",)), ("update",)))
        floors.append(floor_cpu(d, k, n, deltas[0]))
    sec, plain, fl = best(secs[1:]), best(plains[1:]), min(floors[1:])
    return dict(n=n, d=d, graph=graph, k=k, drop=dropout, sec=sec, plain=plain, floor=fl)


def fmt_bytes(b: float) -> str:
    return f"{b / 1e6:.3f}MB" if b >= 1e6 else f"{b / 1e3:.1f}kB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10, 100, 500])
    ap.add_argument("--d", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--graph", nargs="+", choices=["complete", "sparse"], default=["complete", "sparse"])
    ap.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1])
    ap.add_argument("--max-nd", type=float, default=1e8,
                    help="skip configurations with n * d above this (default: d = 1e6 only for n <= 100)")
    ap.add_argument("--reps", type=int, default=3,
                    help="measured repetitions per configuration, after one warm-up; the least CPU is kept")
    ap.add_argument("--quick", action="store_true", help="n = 10, 100; d = 1e4, 1e5; sparse; 0%% and 10%%")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.d, args.graph = [10, 100], [10_000, 100_000], ["sparse"]
    rng = np.random.default_rng(0)
    ident = identities(max(args.n))
    rows = []
    header = (f"{'n':>4} {'d':>8} {'graph':>8} {'k':>4} {'drop':>4} | {'client ms':>9} {'plain':>7} {'floor':>7} "
              f"{'c/floor':>7} | {'client B':>9} {'plain B':>9} {'B ratio':>7} | {'server ms':>9} {'plain':>8} {'s ratio':>7} | ok")
    print(header)
    print("-" * len(header))
    for d in args.d:
        deltas = [(rng.standard_normal(d) * 0.05).astype(np.float32) for _ in range(4)]
        for n in args.n:
            if n * d > args.max_nd:
                continue
            for graph in args.graph:
                for drop in args.dropout:
                    r = bench(n, d, graph, drop, ident, deltas, args.reps)
                    rows.append(r)
                    s, p = r["sec"], r["plain"]
                    print(
                        f"{n:>4} {d:>8} {graph:>8} {r['k']:>4} {drop:>4.0%} | {s.client_cpu * 1e3:>9.2f} "
                        f"{p.client_cpu * 1e3:>7.2f} {r['floor'] * 1e3:>7.2f} {s.client_cpu / r['floor']:>7.2f} | "
                        f"{fmt_bytes(s.client_bytes):>9} {fmt_bytes(p.client_bytes):>9} "
                        f"{s.client_bytes / p.client_bytes:>7.3f} | {s.server_cpu * 1e3:>9.1f} "
                        f"{p.server_cpu * 1e3:>8.1f} {s.server_cpu / p.server_cpu:>7.2f} | "
                        f"{'yes' if s.ok else 'ABORTED: ' + s.note}",
                        flush=True,
                    )
    print()
    print("server cost growth n=100 -> n=500 (aim: at most 6x; n log n gives 6.7x, n^2 25x):")
    for d in args.d:
        for graph in args.graph:
            for drop in args.dropout:
                pick = {r["n"]: r for r in rows if (r["d"], r["graph"], r["drop"]) == (d, graph, drop)}
                if 100 in pick and 500 in pick:
                    a, b = pick[100]["sec"].server_cpu, pick[500]["sec"].server_cpu
                    pa, pb = pick[100]["plain"].server_cpu, pick[500]["plain"].server_cpu
                    print(f"  d={d:>8} {graph:>8} drop={drop:.0%}: secagg x{b / a:.2f}   (plaintext x{pb / pa:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
