"""Per-round cost of the runtime (issue 3): the real aggregator process against in-process baselines.

For each number of clients n and model size d this starts the real aggregator
(``python -m fedsec aggregator --config ...``: gRPC over mutual TLS, signed envelopes, replay
guard, audit log, an fsynced checkpoint per round) on loopback and n simulated sites, and runs a
plaintext-FedAvg job (``secureAggregation.mode: none``) of 1 warm-up + R measured rounds. In the
same run, right after each configuration, it measures the baselines on the same updates:

- in-process FedAvg: ``weighted_mean`` over the same n updates of d float32 (the reference mean);
- in-process protocol: ``PlaintextServer.receive`` of the same n encoded updates, then
  ``close_phase`` (what the aggregator does per update, without transport, envelopes or disk);
- AES-GCM throughput of this machine on one core (``cryptography``'s AESGCM, 128-bit key,
  1 MiB messages): the physical limit of an encrypted channel.

Sites: the benchmark's own client processes (this file, ``--worker``), several sites each, one
thread per site, each with its own TLS key and channel (a separate connection) and its own
identity key: Join, then Poll -> Task -> Contribution(PlainUpdate) until Done, every message
sealed and every reply opened and checked exactly as ``fedsec.runtime.client.SiteClient.call``
does. They do not import torch or train: the update of site i is a fixed random float32 delta
(seeded by i) with the tensor specs of the first Task's model, encoded once and re-sent each round.

Figures per configuration:
- round s: median wall time between consecutive ``round_committed`` events (Task out to n sites, n
  updates in, aggregate, checkpoint); the JSON also has the aggregator's own ``seconds``;
- agg CPU s: the aggregator's CPU time per round (``/proc/PID/stat``, mean over the measured
  rounds), which other load on the machine barely changes; sites CPU s: the simulated sites' CPU
  per round, all client processes together (they share the machine with the aggregator);
- stack MB/s: n x (encoded update bytes) / round s, against AES-GCM MB/s; MB per agg CPU-s: the
  same bytes per second of aggregator CPU;
- a breakdown of the aggregator's CPU per round: its own steps timed in process (build and seal the
  n Tasks, open the n update envelopes, the protocol's receive, the checkpoint), and the rest
  (gRPC, TLS, copies between them, threads) as the measured CPU minus their sum;
- memory: the aggregator's RSS just before round 1 (every site connected and joined) and its peak
  RSS during the measured rounds (VmHWM, reset through ``/proc/PID/clear_refs`` at every commit),
  and (peak - before) / model bytes.

    .venv/bin/python benchmarks/runtime_bench.py              # n = 10, 50, 100; d = 1e4, 1e6
    .venv/bin/python benchmarks/runtime_bench.py --quick      # n = 10, 50; d = 1e4, 1e5; 3 rounds
    .venv/bin/python benchmarks/runtime_bench.py --n 100 --d 1000000 --rounds 5 --json out.json
    .venv/bin/python benchmarks/runtime_bench.py --n 100 --d 1000000 --trace rss.json  # RSS every 5 ms

The grid takes about 2.5 minutes on 2 cores; every wait has a timeout, and every process it starts
(each in its own session) is stopped on the way out, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "operator"))

from fedsec.aggregation.base import ClientUpdate, TensorSpec  # noqa: E402
from fedsec.crypto.pki import AGGREGATOR  # noqa: E402
from fedsec.crypto.keyring import KeyRing  # noqa: E402
from fedsec.protocol.key_epochs import EpochWindow  # noqa: E402
from fedsec.crypto.signing import Signer, Verifier  # noqa: E402
from fedsec.wire import tensors as wire_tensors  # noqa: E402
from fedsec.wire.envelope import open_envelope, seal  # noqa: E402
from fedsec.wire.proto import round_pb2 as pb  # noqa: E402

# The aggregator's gRPC method (checked against fedsec.runtime.aggregator in the parent; not
# imported in the workers because that module imports torch). The benchmark's job never rotates
# keys, so every message is in key epoch 0.
METHOD = "/fedsec.v1.Rounds/Exchange"
KEY_EPOCH = EpochWindow(0, 0)
CALL_TIMEOUT_SECONDS = 120.0
START_TIMEOUT_SECONDS = 120.0  # aggregator start-up (imports torch) until it listens
EVENT_TIMEOUT_SECONDS = 300.0  # the longest silence allowed between two aggregator events
EXIT_TIMEOUT_SECONDS = 60.0
SEED = 20261125
MIB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_HAS_SAMPLES = "num_samples" in pb.Poll.DESCRIPTOR.fields_by_name


class BenchError(RuntimeError):
    pass


# -- the updates: the same in the sites and in the in-process baselines -----------------------------


def site_update(specs: tuple[TensorSpec, ...], index: int) -> ClientUpdate:
    rng = np.random.default_rng([SEED, index])
    delta = {
        s.name: (rng.standard_normal(s.size, dtype=np.float32) * np.float32(1e-3)).reshape(s.shape) for s in specs
    }
    return ClientUpdate(delta, float(100 + index))


def encode_update(u: ClientUpdate) -> bytes:
    return pb.PlainUpdate(delta=wire_tensors.encode(u.delta), weight=u.weight).SerializeToString()


def site_name(i: int) -> str:
    return f"site-{i:03d}"


# -- worker: several simulated sites in one process ---------------------------------------------------


class BenchSite:
    def __init__(self, cfg: dict[str, Any], site: dict[str, Any], marks: dict[int, float], lock: threading.Lock) -> None:
        self.name, self.index = site["name"], int(site["index"])
        self.job_uid = cfg["job_uid"]
        self.max_bytes = int(cfg["max_message_bytes"])
        self.marks, self.lock = marks, lock
        p = site["pki"]
        ca = Path(p["ca_cert"]).read_bytes()
        self.signer = KeyRing(Path(p["keys_dir"])).require(0)
        self.verifier = Verifier(ca)
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=Path(p["tls_key"]).read_bytes(),
            certificate_chain=Path(p["tls_cert"]).read_bytes(),
        )
        self.channel = grpc.secure_channel(cfg["target"], creds, options=[
            ("grpc.ssl_target_name_override", AGGREGATOR),
            ("grpc.max_receive_message_length", 2 * self.max_bytes),
            ("grpc.max_send_message_length", 2 * self.max_bytes),
        ])
        self.exchange = self.channel.unary_unary(METHOD)
        self.weight = 100 + self.index
        self.update_bytes = 0
        self.rounds = 0

    def call(self, body: Any, round_id: int = 0, phase: str = "") -> Any:
        """Seal, send, open and check the reply: what SiteClient.call does, without retries."""
        env = seal(self.signer, body, job_uid=self.job_uid, round_id=round_id, phase=phase, recipient=AGGREGATOR)
        nonce = pb.Header.FromString(env.header).nonce
        raw = self.exchange(env.SerializeToString(), timeout=CALL_TIMEOUT_SECONDS, wait_for_ready=True)
        opened = open_envelope(
            pb.Envelope.FromString(raw), self.verifier, job_uid=self.job_uid, key_epochs=KEY_EPOCH,
            recipient=self.name, replay=None, now_ms=int(time.time() * 1000), max_bytes=2 * self.max_bytes,
        )
        if opened.sender.name != AGGREGATOR:
            raise BenchError(f"reply signed by {opened.sender.name!r}")
        if opened.header.in_reply_to != nonce:
            raise BenchError("reply does not answer the request just sent")
        return opened.body

    def run(self) -> str:
        ack = self.call(pb.Join(client_version="runtime-bench", num_samples=self.weight))
        if not (isinstance(ack, pb.Ack) and ack.accepted):
            raise BenchError(f"join refused: {ack}")
        last_round_id, body = 0, b""
        while True:
            poll = pb.Poll(last_round_id=last_round_id)
            if POLL_HAS_SAMPLES:
                poll.num_samples = self.weight
            reply = self.call(poll)
            if isinstance(reply, pb.Ack):
                raise BenchError(f"poll refused: {reply.reason}: {reply.detail}")
            which = reply.WhichOneof("kind")
            if which == "done":
                return reply.done.status
            if which == "wait":
                if reply.wait.retry_after_ms:
                    time.sleep(reply.wait.retry_after_ms / 1000)
                continue
            task = reply.task
            with self.lock:
                self.marks.setdefault(task.round_id, time.process_time())
            if task.phase != "update":
                raise BenchError(f"unexpected phase {task.phase!r} (is the job's secureAggregation.mode none?)")
            if not body:  # the first Task's model gives the tensor specs; the update is encoded once
                from safetensors.numpy import load as st_load

                specs = wire_tensors.specs_of(st_load(bytes(task.model)))
                body = encode_update(site_update(specs, self.index))
                self.update_bytes = len(body)
            ack = self.call(pb.Contribution(response=body), task.round_id, task.phase)
            if not ack.accepted:
                raise BenchError(f"update refused: {ack.reason}: {ack.detail}")
            last_round_id = task.round_id
            self.rounds += 1


def worker_main(config_path: Path) -> int:
    cfg = json.loads(config_path.read_text())
    marks: dict[int, float] = {}
    lock = threading.Lock()
    out: dict[str, Any] = {"sites": {}, "errors": []}

    def one(site: dict[str, Any]) -> None:
        try:
            s = BenchSite(cfg, site, marks, lock)
            status = s.run()
            with lock:
                out["sites"][s.name] = {"status": status, "rounds": s.rounds, "update_bytes": s.update_bytes}
            s.channel.close()
        except Exception as exc:  # reported to the parent, which fails the configuration
            with lock:
                out["errors"].append(f"{site['name']}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=(s,), daemon=True) for s in cfg["sites"]]
    for t in threads:
        t.start()
    deadline = time.monotonic() + float(cfg["deadline_seconds"])
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        out["errors"].append("timed out")
    out["cpu_end"] = time.process_time()
    out["marks"] = {str(k): v for k, v in marks.items()}
    print(json.dumps(out), flush=True)
    return 1 if out["errors"] else 0


# -- the parent: processes, events, memory -----------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def write_manifests(directory: Path, n: int, d: int, rounds: int) -> Path:
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    job = {
        "apiVersion": "fedsec.io/v1alpha1", "kind": "FederatedJob",
        "metadata": {"name": f"bench-n{n}-d{d}"},
        "spec": {
            "model": {"factory": "bench_models:flat", "inputDim": 1, "params": {"d": d}},
            "task": {"standardize": False},
            "rounds": rounds,
            "clients": {"selector": {"matchLabels": {"study": "runtime-bench"}}},
            "quorum": {"minClients": n, "roundTimeoutSeconds": 600, "joinTimeoutSeconds": 300, "maxRetries": 0},
            "secureAggregation": {"mode": "none"},
            "maxMessageBytes": 64 * MIB,
        },
    }
    sites = [
        {
            "apiVersion": "fedsec.io/v1alpha1", "kind": "FederatedClient",
            "metadata": {"name": site_name(i), "labels": {"study": "runtime-bench"}},
            # never loaded: the benchmark's sites send synthetic updates; the job's factory is
            # listed because a site admits no factory it does not list
            "spec": {"data": {"builtin": {"name": "breast-cancer"}},
                     "policy": {"allowedModelFactories": ["bench_models:flat"]}},
        }
        for i in range(n)
    ]
    (directory / "manifests.yaml").write_text(yaml.safe_dump_all([job, *sites], sort_keys=False))
    return directory


class Processes:
    """Every process this benchmark starts, each in its own session, stopped by its own id."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(log, "wb") as log_fh:
            p = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                argv, stdout=subprocess.PIPE, stderr=log_fh, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)  # the group of this child only (its own session)
        deadline = time.monotonic() + 10.0
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        self.procs.clear()


def run_stack(n: int, d: int, warmup: int, measured: int, per_proc: int, workdir: Path, verbose: bool,
              trace: list[tuple[float, str, float]] | None = None, agg_env: dict[str, str] | None = None) -> dict[str, Any]:
    from fedsec.runtime import local

    rounds = warmup + measured
    root = workdir / f"n{n}-d{d}"
    layout = local.prepare(write_manifests(root / "manifests", n, d, rounds), root / "run", None, [])
    local.write_configs(layout, None)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")) if p)}
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    procs = Processes()
    mem: dict[str, Any] = {"round_peaks": [], "cpu": []}
    t_commit: list[float] = []
    engine_seconds: list[float] = []
    try:
        agg = procs.start([sys.executable, "-m", "fedsec", "aggregator", "--config", str(layout.aggregator_config)],
                          root / "aggregator.log", {**env, **(agg_env or {})})
        pid = agg.pid

        def read_events() -> None:
            assert agg.stdout is not None
            first_round = True
            for line in agg.stdout:
                now = time.monotonic()
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                kind = ev.get("event")
                try:  # sample the aggregator at once, before it moves on
                    if kind == "listening":
                        mem["rss_listening"] = proc_status(pid)["VmRSS"]
                        mem["peak_resettable"] = reset_peak(pid)
                    elif kind == "round_started" and first_round:
                        first_round = False
                        mem["rss_before"] = proc_status(pid)["VmRSS"]
                        mem["cpu_start"] = proc_cpu(pid)
                        reset_peak(pid)
                    elif kind == "round_committed":
                        mem["round_peaks"].append(proc_status(pid)["VmHWM"])
                        mem["cpu"].append(proc_cpu(pid))
                        reset_peak(pid)
                except (OSError, ValueError, KeyError):
                    pass
                if trace is not None and kind in ("round_started", "answer", "round_committed"):
                    trace.append((now, kind, 0.0))
                events.put(("event", (now, ev)))

        threading.Thread(target=read_events, daemon=True).start()

        def sample_rss() -> None:  # --trace: the aggregator's RSS every 5 ms, beside its events
            while trace is not None and agg.poll() is None:
                try:
                    trace.append((time.monotonic(), "rss", proc_status(pid)["VmRSS"] / 1e6))
                except (OSError, KeyError):
                    return
                time.sleep(0.005)

        if trace is not None:
            threading.Thread(target=sample_rss, daemon=True).start()

        def waiter(name: str, p: subprocess.Popen[bytes], read_stdout: bool) -> None:
            out = p.stdout.read() if read_stdout and p.stdout else b""
            events.put(("exit", (name, p.wait(), out)))

        threading.Thread(target=waiter, args=("aggregator", agg, False), daemon=True).start()

        def next_event(timeout: float) -> tuple[str, Any]:
            try:
                return events.get(timeout=timeout)
            except queue.Empty:
                raise BenchError(f"n={n} d={d}: no event from the aggregator for {timeout:g}s (see {root})") from None

        while True:  # until it listens
            kind, payload = next_event(START_TIMEOUT_SECONDS)
            if kind == "exit":
                raise BenchError(f"aggregator exited with {payload[1]} before listening (see {root}/aggregator.log)")
            if payload[1].get("event") == "listening":
                port = int(payload[1]["port"])
                break

        n_workers = max(2, math.ceil(n / per_proc)) if n > 1 else 1
        groups = [list(range(n))[k::n_workers] for k in range(n_workers)]
        workers = {}
        for k, idx in enumerate(groups):
            cfg = {
                "target": f"127.0.0.1:{port}", "job_uid": layout.job_uid, "max_message_bytes": 64 * MIB,
                "deadline_seconds": EVENT_TIMEOUT_SECONDS * (rounds + 2),
                "sites": [{"name": site_name(i), "index": i,
                           "pki": json.loads(layout.pki_paths(site_name(i)).model_dump_json())} for i in idx],
            }
            path = root / f"worker-{k}.json"
            path.write_text(json.dumps(cfg))
            p = procs.start([sys.executable, str(Path(__file__).resolve()), "--worker", str(path)],
                            root / f"worker-{k}.log", env)
            workers[f"worker-{k}"] = p
            threading.Thread(target=waiter, args=(f"worker-{k}", p, True), daemon=True).start()

        finished, results, exits = False, {}, {}
        while not (finished and len(results) == len(workers) and "aggregator" in exits):
            kind, payload = next_event(EVENT_TIMEOUT_SECONDS if not finished else EXIT_TIMEOUT_SECONDS)
            if kind == "exit":
                name, code, out = payload
                exits[name] = code
                if name == "aggregator":
                    if not finished:
                        raise BenchError(f"aggregator exited with {code} before the job finished (see {root}/aggregator.log)")
                    continue
                try:
                    results[name] = json.loads(out.decode().strip().splitlines()[-1])
                except (ValueError, IndexError):
                    results[name] = {"errors": [f"exit {code}, no result (see {root}/{name}.log)"]}
                if results[name].get("errors") or code != 0:
                    raise BenchError(f"n={n} d={d}: {name} failed: {results[name].get('errors')}")
                continue
            t, ev = payload
            kind = ev.get("event")
            if kind == "round_committed":
                t_commit.append(t)
                engine_seconds.append(float(ev["seconds"]))
                if verbose:
                    print(f"  n={n} d={d}: round {ev['round']} committed ({ev['seconds']:.2f}s)", file=sys.stderr, flush=True)
            elif kind == "round_discarded":
                raise BenchError(f"n={n} d={d}: round {ev.get('round')} discarded: {ev.get('reason')}")
            elif kind == "job_finished":
                if ev.get("status") != "Succeeded":
                    raise BenchError(f"n={n} d={d}: job {ev.get('status')}: {ev.get('reason')}")
                finished = True
    finally:
        procs.stop_all()

    if len(t_commit) != rounds:
        raise BenchError(f"n={n} d={d}: {len(t_commit)} rounds committed, expected {rounds}")
    # Round r's wall time: from commit r-1 to commit r (round 1 from its start, so it is never measured).
    walls = [b - a for a, b in zip(t_commit[warmup - 1:], t_commit[warmup:], strict=False)]
    # CPU over all measured rounds together: /proc's clock ticks are 10 ms, too coarse for one small round
    agg_cpu = (mem["cpu"][-1] - mem["cpu"][warmup - 1]) / measured if len(mem["cpu"]) == rounds else None
    first_measured_round_id = None
    client_cpu = 0.0
    for r in results.values():
        marks = {int(k): v for k, v in r["marks"].items()}
        ids = sorted(marks)
        if len(ids) >= warmup + 1:
            first_measured_round_id = ids[warmup]
            # from its first Task of round warmup+1 to the end (answers of the measured rounds, Done)
            client_cpu += r["cpu_end"] - marks[ids[warmup]]
    update_bytes = {s["update_bytes"] for r in results.values() for s in r["sites"].values()}
    from fedsec.runtime.checkpoints import CheckpointStore

    latest = CheckpointStore(layout.run_dir).latest()
    assert latest is not None
    final = latest.load_model()
    return {
        "round_seconds": statistics.median(walls),
        "round_seconds_all": walls,
        "engine_seconds": statistics.median(engine_seconds[warmup:]),
        "agg_cpu_seconds": agg_cpu,
        "client_cpu_seconds": client_cpu / measured if first_measured_round_id is not None else None,
        "update_bytes": max(update_bytes),
        "rss_listening": mem.get("rss_listening"),
        "rss_before": mem.get("rss_before"),
        "peak_rss": max(mem["round_peaks"][warmup:]) if mem.get("peak_resettable") else max(mem["round_peaks"]),
        "peak_rss_warmup": mem["round_peaks"][0] if mem["round_peaks"] else None,
        "peak_per_round": mem["round_peaks"],
        "peak_resettable": bool(mem.get("peak_resettable")),
        "final_model": final,
        "specs": tuple(wire_tensors.specs_of(final)),
        "rounds": rounds,
        "processes": len(groups),
    }


# -- baselines ------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], reps: int) -> tuple[float, float, Any]:
    """Median wall and CPU seconds of ``fn`` over ``reps`` calls, and its last result."""
    walls, cpus, out = [], [], None
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), statistics.median(cpus), out


def baselines(n: int, specs: tuple[TensorSpec, ...], reps: int) -> dict[str, Any]:
    from fedsec.aggregation.base import RoundContext, weighted_mean
    from fedsec.aggregation.plaintext import PlaintextMode

    updates = {site_name(i): site_update(specs, i) for i in range(n)}
    t_mean, c_mean, ref = timed(functools.partial(weighted_mean, updates), reps)
    bodies = [(name, encode_update(u)) for name, u in updates.items()]
    del updates
    ctx = RoundContext(job_uid="bench", round_id=1, participants=tuple(sorted(name for name, _ in bodies)),
                       min_survivors=len(bodies), tensor_specs=specs)

    def stream() -> Any:
        server = PlaintextMode().server(ctx)
        for name, body in bodies:
            server.receive(name, body)
        return server.close_phase()

    t_stream, c_stream, outcome = timed(stream, reps)
    for k, v in ref.mean_delta.items():
        if not np.allclose(outcome.aggregate.mean_delta[k], v, rtol=1e-5, atol=1e-9):
            raise BenchError("the plaintext server and weighted_mean disagree")
    return {"fedavg_seconds": t_mean, "fedavg_cpu": c_mean, "stream_seconds": t_stream, "stream_cpu": c_stream,
            "mean": ref.mean_delta}


def breakdown(n: int, specs: tuple[TensorSpec, ...], workdir: Path, reps: int) -> dict[str, float]:
    """CPU seconds per round of the aggregator's own steps, in process: n x (per-message cost) + one commit.

    What the aggregator does for each site each round, outside gRPC: build and seal the Task that
    carries the model; parse and open the site's Contribution envelope (Ed25519 verify, SHA-256 of
    the body, protobuf parses); the protocol's receive (decode, finiteness check, float64 fold). And
    once per round: the new model's safetensors (for the next Tasks) and its fsynced checkpoint.
    """
    from fedsec.crypto import pki
    from fedsec.runtime.checkpoints import CheckpointStore

    ca = pki.new_ca("bench")
    agg_id, site_id = pki.issue_signing(ca, AGGREGATOR, 0), pki.issue_signing(ca, "site-000", 0)
    agg_signer, site_signer = Signer(agg_id.key_pem, agg_id.cert_pem), Signer(site_id.key_pem, site_id.cert_pem)
    verifier = Verifier(ca.cert_pem)
    model = {s.name: np.zeros(s.shape, dtype=np.float32) for s in specs}
    model_bytes = wire_tensors.encode(model)
    body = encode_update(site_update(specs, 0))
    names = tuple(site_name(i) for i in range(n))

    def task_out() -> bytes:
        reply = pb.Reply(task=pb.Task(round_id=7, round_number=1, kind="train", phase="update", model=model_bytes,
                                      participants=list(names), min_survivors=n, model_version=1))
        return seal(agg_signer, reply, job_uid="bench", round_id=7, phase="update", recipient="site-000",
                    in_reply_to=b"x" * 16).SerializeToString()

    def update_in() -> Any:
        raw = seal(site_signer, pb.Contribution(response=body), job_uid="bench", round_id=7, phase="update",
                   recipient=AGGREGATOR).SerializeToString()
        c0 = time.process_time()
        env = pb.Envelope()
        env.ParseFromString(raw)
        open_envelope(env, verifier, job_uid="bench", key_epochs=KEY_EPOCH, recipient=AGGREGATOR, replay=None,
                      now_ms=int(time.time() * 1000), max_bytes=128 * MIB)
        return time.process_time() - c0

    verifier.identity(site_signer.cert_der)  # the aggregator's certificate cache is warm after round 1
    _, c_task, _ = timed(task_out, reps)
    c_open = statistics.median(update_in() for _ in range(reps))
    store = CheckpointStore(workdir / "breakdown-checkpoints")
    t_commit, c_commit, _ = timed(lambda: (store.commit(model, {"round": 1}), wire_tensors.encode(model)), reps)
    shutil.rmtree(workdir / "breakdown-checkpoints", ignore_errors=True)
    return {"task_out": n * c_task, "update_in": n * c_open, "commit": c_commit, "commit_wall": t_commit}


def aes_gcm_rate(seconds: float = 0.4, reps: int = 3, size: int = MIB) -> float:
    """Bytes per CPU second AES-128-GCM encrypts on one thread (the suite gRPC's TLS 1.3 prefers).

    Timed with the process CPU clock, so other load on the machine does not lower it."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead, data = AESGCM(AESGCM.generate_key(bit_length=128)), os.urandom(size)
    rates = []
    for _ in range(reps):
        done, counter, t0 = 0, 0, time.process_time()
        while (elapsed := time.process_time() - t0) < seconds:
            counter += 1
            aead.encrypt(counter.to_bytes(12, "big"), data, None)
            done += size
        rates.append(done / elapsed)
    return statistics.median(rates)


def check_model(final: dict[str, np.ndarray], mean: dict[str, np.ndarray], rounds: int) -> None:
    """The stack applied the same mean every round, starting from zeros (float32 sums, as it does)."""
    for k, m in mean.items():
        want = np.zeros_like(m)
        for _ in range(rounds):
            want = want + m
        if not np.allclose(final[k], want, rtol=1e-4, atol=1e-7):
            raise BenchError(f"the stack's model differs from {rounds} x the in-process mean (tensor {k!r})")


# -- report -----------------------------------------------------------------------------------------------


def fmt_d(d: int) -> str:
    e = int(round(math.log10(d))) if d > 0 else 0
    return f"1e{e}" if 10**e == d else str(d)


COLUMNS = [
    ("n", "{n}"), ("d", "{d_s}"), ("round s", "{round_seconds:.3f}"), ("agg CPU s", "{agg_cpu:.3f}"),
    ("sites CPU s", "{client_cpu:.3f}"), ("FedAvg s", "{fedavg_seconds:.4f}"), ("round/FedAvg", "{x_fedavg:.0f}"),
    ("agg CPU/FedAvg CPU", "{x_fedavg_cpu:.0f}"), ("stack MB/s", "{stack_mbs:.1f}"),
    ("MB per agg CPU-s", "{stack_mb_per_cpu:.0f}"), ("AES-GCM MB/s", "{aes_mbs:.0f}"),
    ("stack/AES", "{stack_over_aes:.2%}"), ("RSS before MB", "{rss_before_mb:.0f}"), ("peak MB", "{peak_mb:.0f}"),
    ("(peak-before)/model", "{mem_ratio:.1f}"),
]
BREAKDOWN = [
    ("n", "{n}"), ("d", "{d_s}"), ("agg CPU s", "{agg_cpu:.3f}"), ("Tasks out", "{bd_task_out:.3f}"),
    ("envelopes in", "{bd_update_in:.3f}"), ("protocol receive", "{stream_cpu:.3f}"),
    ("commit CPU (wall)", "{bd_commit:.3f} ({bd_commit_wall:.3f})"), ("rest (gRPC, TLS, threads)", "{bd_rest:.3f}"),
]


def row_of(n: int, d: int, st: dict[str, Any], bl: dict[str, Any], bd: dict[str, float], aes: float) -> dict[str, Any]:
    model_bytes = 4 * d
    stack_rate = n * st["update_bytes"] / st["round_seconds"]
    agg_cpu = st["agg_cpu_seconds"] if st["agg_cpu_seconds"] is not None else float("nan")
    return {
        "n": n, "d": d, "d_s": fmt_d(d), "rounds_measured": len(st["round_seconds_all"]),
        "round_seconds": st["round_seconds"], "round_seconds_all": st["round_seconds_all"],
        "engine_seconds": st["engine_seconds"], "agg_cpu": agg_cpu,
        "client_cpu": st["client_cpu_seconds"] if st["client_cpu_seconds"] is not None else float("nan"),
        "fedavg_seconds": bl["fedavg_seconds"], "fedavg_cpu": bl["fedavg_cpu"],
        "x_fedavg": st["round_seconds"] / bl["fedavg_seconds"], "x_fedavg_cpu": agg_cpu / bl["fedavg_cpu"],
        "stream_seconds": bl["stream_seconds"], "stream_cpu": bl["stream_cpu"],
        "x_stream": st["round_seconds"] / bl["stream_seconds"],
        "update_bytes": st["update_bytes"], "stack_mbs": stack_rate / 1e6,
        "stack_mb_per_cpu": n * st["update_bytes"] / agg_cpu / 1e6, "aes_mbs": aes / 1e6,
        "stack_over_aes": stack_rate / aes,
        "bd_task_out": bd["task_out"], "bd_update_in": bd["update_in"], "bd_commit": bd["commit"],
        "bd_commit_wall": bd["commit_wall"],
        "bd_rest": agg_cpu - bd["task_out"] - bd["update_in"] - bl["stream_cpu"] - bd["commit"],
        "rss_listening_mb": (st["rss_listening"] or 0) / 1e6, "rss_before_mb": (st["rss_before"] or 0) / 1e6,
        "peak_mb": st["peak_rss"] / 1e6, "peak_warmup_mb": (st["peak_rss_warmup"] or 0) / 1e6,
        "peak_per_round_mb": [p / 1e6 for p in st["peak_per_round"]],
        "model_mb": model_bytes / 1e6,
        "mem_ratio": (st["peak_rss"] - (st["rss_before"] or 0)) / model_bytes,
        "peak_reset_per_round": st["peak_resettable"], "site_processes": st["processes"],
    }


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    cells = [[h for h, _ in columns]] + [[f.format(**r) for _, f in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells[1:]:
        print("| " + " | ".join(x.rjust(w) for x, w in zip(c, widths, strict=True)) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 10, 50; d = 1e4, 1e5; 3 measured rounds")
    ap.add_argument("--n", type=int, nargs="+", help="numbers of clients (default 10 50 100)")
    ap.add_argument("--d", type=int, nargs="+", help="model sizes in parameters (default 10000 1000000)")
    ap.add_argument("--rounds", type=int, help="measured rounds, after one warm-up round (default 5; quick 3)")
    ap.add_argument("--sites-per-process", type=int, default=10, help="simulated sites per client process (default 10)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each in-process baseline (median)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the run directories (logs, checkpoints, audit)")
    ap.add_argument("--verbose", "-v", action="store_true", help="one line per committed round on stderr")
    ap.add_argument("--aggregator-env", metavar="KEY=VALUE", action="append", default=[],
                    help="extra environment for the aggregator only (e.g. MALLOC_ARENA_MAX=2); repeatable")
    ap.add_argument("--trace", type=Path, help="write the aggregator's RSS every 5 ms and its events here (JSON)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)

    from fedsec.runtime import aggregator as runtime_aggregator  # imports torch; the workers never do

    if runtime_aggregator.METHOD != METHOD:
        raise SystemExit("runtime_bench is out of date with fedsec.runtime.aggregator (METHOD)")
    ns = args.n or ([10, 50] if args.quick else [10, 50, 100])
    ds = args.d or ([10_000, 100_000] if args.quick else [10_000, 1_000_000])
    measured = args.rounds or (3 if args.quick else 5)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in finally blocks
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C too, even if started in the background

    workdir = Path(tempfile.mkdtemp(prefix="fedsec-runtime-bench-"))
    rows: list[dict[str, Any]] = []
    traces: dict[str, Any] = {}
    started, load_start = time.monotonic(), os.getloadavg()[0]
    print(f"runtime benchmark: n={ns} d={ds}, 1 warm-up + {measured} measured rounds each, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; work dir {workdir}", file=sys.stderr, flush=True)
    try:
        for d in ds:
            for n in ns:
                t0 = time.monotonic()
                trace: list[tuple[float, str, float]] | None = [] if args.trace else None
                st = run_stack(n, d, 1, measured, args.sites_per_process, workdir, args.verbose, trace,
                               dict(kv.split("=", 1) for kv in args.aggregator_env))
                if trace is not None:
                    traces[f"n{n}-d{d}"] = trace
                bl = baselines(n, st["specs"], args.reps)
                check_model(st["final_model"], bl.pop("mean"), st["rounds"])
                bd = breakdown(n, st["specs"], workdir, args.reps)
                aes = aes_gcm_rate()
                row = row_of(n, d, st, bl, bd, aes)
                row["load_average"] = os.getloadavg()[0]
                rows.append(row)
                print(f"n={n} d={fmt_d(d)}: round {row['round_seconds']:.3f}s (agg CPU {row['agg_cpu']:.3f}s), "
                      f"x{row['x_fedavg']:.0f} FedAvg, "
                      f"{row['stack_over_aes']:.2%} of AES-GCM, peak {row['peak_mb']:.0f} MB "
                      f"(+{row['mem_ratio']:.1f} models); {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
                if not args.keep:
                    shutil.rmtree(workdir / f"n{n}-d{d}", ignore_errors=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BenchError as exc:
        args.keep = True  # the logs say why
        print(f"failed: {exc}\nlogs, checkpoints and audit log kept in {workdir}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows, COLUMNS)
    print("\nWhere the aggregator's CPU goes per round (in-process estimates of its own steps; rest = measured - sum):\n")
    print_table(rows, BREAKDOWN)
    print(f"\n{len(rows)} configurations in {time.monotonic() - started:.0f}s; load average now {os.getloadavg()[0]:.2f}")
    if args.trace:
        args.trace.write_text(json.dumps(traces))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"cpus": os.cpu_count(), "platform": sys.platform, "python": sys.version.split()[0],
                        "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()[0]},
            "rows": rows,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
