"""One table of manifests, judged twice: by `fedsec validate` (tests/unit/api/test_manifest_table.py) and
by the real API server through `kubectl apply --dry-run=server` (tests/e2e/operator/test_crds.py).

Each case is one of the examples (examples/breast-cancer/job.yaml or hospital-01.yaml) with one change,
or YAML text where the spelling matters (`rounds: "20"`, `threshold: 1.0`). An invalid case names the
field path that both verdicts must name; a valid case (an edge that a too-strict rule would refuse)
must be accepted by both. A rule added on one side only makes one of the two tests fail.

The field path in a message is matched as a whole token (``names_path``): ``spec.model`` is not
found in ``spec.model.params``, so a case says exactly which object or field is wrong.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
JOB_FILE = ROOT / "examples" / "breast-cancer" / "job.yaml"
CLIENT_FILE = ROOT / "examples" / "breast-cancer" / "hospital-01.yaml"
JOB: dict[str, Any] = yaml.safe_load(JOB_FILE.read_text())
CLIENT: dict[str, Any] = yaml.safe_load(CLIENT_FILE.read_text())

DELETE = object()


@dataclass(frozen=True)
class Case:
    id: str
    text: str  # the manifest, as YAML
    path: str | None  # the field both verdicts name; None: a valid manifest, accepted by both
    # Set where kubectl itself refuses the document before the server sees it, so its message cannot
    # name a field: what kubectl says instead. JSON has no NaN or infinity, and kubectl sends JSON.
    kubectl_says: str | None = None

    @property
    def valid(self) -> bool:
        return self.path is None


def edit(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of doc with the dotted path set to value (or removed, for DELETE)."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


def _dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def job(id: str, path: str, value: Any, names: str | None, **kw: Any) -> Case:
    return Case(id, _dump(edit(JOB, path, value)), names, **kw)


def client(id: str, path: str, value: Any, names: str | None, **kw: Any) -> Case:
    return Case(id, _dump(edit(CLIENT, path, value)), names, **kw)


def job_text(id: str, old: str, new: str, names: str | None) -> Case:
    """The example job's text with one line changed: where YAML's spelling is the point."""
    text = JOB_FILE.read_text()
    assert text.count(old) == 1, f"{id}: {old!r} is not once in {JOB_FILE}"
    return Case(id, text.replace(old, new), names)


def names_path(message: str, path: str) -> bool:
    """Whether message names path as a whole field path: not a prefix of a longer path, and not glued to
    a word. A '.' before it is allowed: kubectl's decoder says "Go struct field ObjectMeta.metadata.labels"."""
    return re.search(rf"(?<![\w\[]){re.escape(path)}(?![\w.\[])", message) is not None


FACTORY_MODEL = {"factory": "mypkg.models:make", "inputDim": 30}
EDGE_METADATA = {
    "name": "breast-cancer", "labels": {"fedsec.io/study": "breast-cancer"},
    "annotations": {"example.com/owner": "team-a"}, "finalizers": ["example.com/keep"], "creationTimestamp": None,
}

INVALID: list[Case] = [
    # rounds: the types Kubernetes is strict about
    job("rounds-zero", "spec.rounds", 0, "spec.rounds"),
    job("rounds-above-limit", "spec.rounds", 100_001, "spec.rounds"),
    job("rounds-missing", "spec.rounds", DELETE, "spec.rounds"),
    job_text("rounds-quoted-number", "rounds: 20", 'rounds: "20"', "spec.rounds"),
    job_text("rounds-boolean", "rounds: 20", "rounds: true", "spec.rounds"),
    job_text("rounds-not-whole", "rounds: 20", "rounds: 20.5", "spec.rounds"),
    job("rounds-word", "spec.rounds", "many", "spec.rounds"),
    # model
    job("model-builtin-unknown", "spec.model.builtin", "transformer", "spec.model.builtin"),
    job("model-neither-kind", "spec.model", {"inputDim": 30}, "spec.model"),
    job("model-both-kinds", "spec.model.factory", "mypkg.models:make", "spec.model"),
    job("model-factory-malformed", "spec.model", {**FACTORY_MODEL, "factory": "not a factory"}, "spec.model.factory"),
    job("model-factory-glob", "spec.model", {**FACTORY_MODEL, "factory": "mypkg.models:*"}, "spec.model.factory"),
    # Python's `$` matches before a final newline, the API server's (ECMA) does not: both must refuse.
    job("model-factory-trailing-newline", "spec.model", {**FACTORY_MODEL, "factory": "mypkg.models:make\n"},
        "spec.model.factory"),
    job("model-builtin-with-params", "spec.model.params", {"depth": 2}, "spec.model"),
    job("model-builtin-with-empty-params", "spec.model.params", {}, "spec.model"),
    job("model-params-nested-map", "spec.model", {**FACTORY_MODEL, "params": {"layers": {"a": 1}}},
        "spec.model.params.layers"),
    job("model-params-list", "spec.model", {**FACTORY_MODEL, "params": {"sizes": [64, 32]}}, "spec.model.params.sizes"),
    job("model-seed-negative", "spec.model.seed", -1, "spec.model.seed"),
    job("model-seed-2-to-the-32", "spec.model.seed", 2**32, "spec.model.seed"),
    job("model-input-dim-quoted", "spec.model.inputDim", "30", "spec.model.inputDim"),
    job("model-one-class", "spec.model.numClasses", 1, "spec.model.numClasses"),
    job("model-hidden-zero", "spec.model.hidden", [64, 0], "spec.model.hidden[1]"),
    # task
    job("task-optimizer-unknown", "spec.task.optimizer", "lbfgs", "spec.task.optimizer"),
    job("task-learning-rate-zero", "spec.task.learningRate", 0, "spec.task.learningRate"),
    job("task-learning-rate-quoted", "spec.task.learningRate", "0.1", "spec.task.learningRate"),
    job("task-learning-rate-infinite", "spec.task.learningRate", float("inf"), "spec.task.learningRate",
        kubectl_says="unsupported value: +Inf"),
    job("task-momentum-one", "spec.task.momentum", 1.0, "spec.task.momentum"),
    job("task-standardize-word", "spec.task.standardize", "yes", "spec.task.standardize"),
    job("task-unknown-field", "spec.task.surprise", 1, "spec.task.surprise"),
    job("task-feature-range-one-bound", "spec.task.featureRanges", [[0.0, 1.0], [1.0]], "spec.task.featureRanges[1]"),
    job("task-feature-range-reversed", "spec.task.featureRanges", [[0.0, 1.0], [5.0, 2.0]], "spec.task.featureRanges[1]"),
    # quorum
    job("quorum-fraction-above-one", "spec.quorum.minFraction", 1.5, "spec.quorum.minFraction"),
    job("quorum-no-bound", "spec.quorum", {"roundTimeoutSeconds": 5}, "spec.quorum"),
    job("quorum-min-clients-zero", "spec.quorum.minClients", 0, "spec.quorum.minClients"),
    job("quorum-timeout-nan", "spec.quorum.roundTimeoutSeconds", float("nan"), "spec.quorum.roundTimeoutSeconds",
        kubectl_says="unsupported value: NaN"),
    # secure aggregation
    job("secagg-mode-unknown", "spec.secureAggregation.mode", "magic", "spec.secureAggregation.mode"),
    job("secagg-threshold-minority", "spec.secureAggregation.threshold", 0.4, "spec.secureAggregation.threshold"),
    job("secagg-threshold-half", "spec.secureAggregation.threshold", 0.5, "spec.secureAggregation.threshold"),
    job("secagg-threshold-between-fraction-and-count", "spec.secureAggregation.threshold", 1.5,
        "spec.secureAggregation.threshold"),
    job("secagg-threshold-boolean", "spec.secureAggregation.threshold", True, "spec.secureAggregation.threshold"),
    job("secagg-threshold-count-too-large", "spec.secureAggregation.threshold", 1_000_001,
        "spec.secureAggregation.threshold"),
    Case("secagg-threshold-above-min-clients", _dump(edit(edit(JOB, "spec.quorum", {"minClients": 3}),
                                                          "spec.secureAggregation.threshold", 4)),
         "spec.secureAggregation"),
    job("secagg-neighbours-odd", "spec.secureAggregation.neighbours", 5, "spec.secureAggregation.neighbours"),
    job("secagg-ring-bits-16", "spec.secureAggregation.ringBits", 16, "spec.secureAggregation.ringBits"),
    job("secagg-poly-degree-not-a-power", "spec.secureAggregation.polyModulusDegree", 1000,
        "spec.secureAggregation.polyModulusDegree"),
    # privacy
    job("privacy-mechanism-without-epsilon", "spec.privacy", {"mechanism": "dp-sgd"}, "spec.privacy"),
    job("privacy-clipping-norm-infinite", "spec.privacy", {"clippingNorm": float("inf")}, "spec.privacy.clippingNorm",
        kubectl_says="unsupported value: +Inf"),
    job("privacy-delta-one", "spec.privacy", {"delta": 1.0}, "spec.privacy.delta"),
    # selector, rollback, keys, limits
    job("selector-operator-unknown", "spec.clients.selector.matchExpressions", [{"key": "a", "operator": "Near"}],
        "spec.clients.selector.matchExpressions[0].operator"),
    job("rollback-beyond-rounds", "spec.rollback", {"toRound": 21}, "spec.rollback"),
    job("rollback-negative", "spec.rollback", {"toRound": -1}, "spec.rollback.toRound"),
    job("keys-rotation-every-zero", "spec.keys", {"rotation": {"everyRounds": 0}}, "spec.keys.rotation.everyRounds"),
    job("checkpoints-keep-negative", "spec.checkpoints", {"keep": -1}, "spec.checkpoints.keep"),
    job("max-message-bytes-tiny", "spec.maxMessageBytes", 100, "spec.maxMessageBytes"),
    job("holdout-seed-negative", "spec.evaluation.holdout.builtin.seed", -5, "spec.evaluation.holdout.builtin.seed"),
    job("holdout-builtin-and-file", "spec.evaluation.holdout.file", {"path": "holdout.csv"}, "spec.evaluation.holdout"),
    # metadata: the real ObjectMeta fields only, and Kubernetes' rules for names, labels and annotations
    job("metadata-labels-typo", "metadata.lables", {"fedsec.io/study": "breast-cancer"}, "metadata.lables"),
    job("metadata-name-not-dns", "metadata.name", "Bad_Name", "metadata.name"),
    job("metadata-name-with-dot", "metadata.name", "breast.cancer", "metadata.name"),
    job("metadata-label-value-invalid", "metadata.labels", {"study": "not valid!"}, "metadata.labels"),
    job("metadata-label-value-number", "metadata.labels", {"version": 2}, "metadata.labels"),
    job("metadata-annotation-key-invalid", "metadata.annotations", {"bad key!": "x"}, "metadata.annotations"),
    # FederatedClient
    client("client-data-empty", "spec.data", {}, "spec.data"),
    client("client-shard-out-of-range", "spec.data.builtin.partition.shard", 12, "spec.data.builtin.partition"),
    client("client-dataset-unknown", "spec.data.builtin.name", "mnist", "spec.data.builtin.name"),
    client("client-alpha-zero", "spec.data.builtin.partition.alpha", 0, "spec.data.builtin.partition.alpha"),
    client("client-alpha-infinite", "spec.data.builtin.partition.alpha", float("inf"), "spec.data.builtin.partition.alpha",
           kubectl_says="unsupported value: +Inf"),
    client("client-partition-seed-2-to-the-32", "spec.data.builtin.partition.seed", 2**32,
           "spec.data.builtin.partition.seed"),
    client("client-file-absolute-in-claim", "spec.data", {"file": {"path": "/etc/passwd", "claimName": "data"}},
           "spec.data.file"),
    client("client-file-parent-in-claim", "spec.data", {"file": {"path": "a/../../b.csv", "claimName": "data"}},
           "spec.data.file"),
    client("client-claim-name-invalid", "spec.data", {"file": {"path": "d.csv", "claimName": "Bad_Claim"}},
           "spec.data.file.claimName"),
    client("client-image-pattern-with-space", "spec.policy.allowedAggregatorImages", ["ghcr.io/fedsec/runtime latest"],
           "spec.policy.allowedAggregatorImages[0]"),
    client("client-factory-glob", "spec.policy.allowedModelFactories", ["mypkg.models:*"],
           "spec.policy.allowedModelFactories[0]"),
    client("client-require-dp-word", "spec.policy.requireDp", "true", "spec.policy.requireDp"),
    client("client-budget-negative", "spec.privacy.budget", -1, "spec.privacy.budget"),
    client("client-metadata-labels-typo", "metadata.lables", {"fedsec.io/study": "breast-cancer"}, "metadata.lables"),
]

VALID: list[Case] = [
    Case("example-job", JOB_FILE.read_text(), None),
    Case("example-client", CLIENT_FILE.read_text(), None),
    job("rounds-one", "spec.rounds", 1, None),
    job_text("rounds-whole-float", "rounds: 20", "rounds: 20.0", None),  # kubectl sends 20
    job("learning-rate-integer", "spec.task.learningRate", 1, None),
    job_text("threshold-one-point-zero", "threshold: 0.67 ", "threshold: 1.0 ", None),
    job_text("threshold-one", "threshold: 0.67 ", "threshold: 1 ", None),  # the same number: every participant
    job("threshold-count", "spec.secureAggregation.threshold", 3, None),
    job_text("threshold-count-whole-float", "threshold: 0.67 ", "threshold: 3.0 ", None),
    job("threshold-just-above-half", "spec.secureAggregation.threshold", 0.51, None),
    Case("threshold-count-equal-to-min-clients", _dump(edit(edit(JOB, "spec.quorum", {"minClients": 3}),
                                                            "spec.secureAggregation.threshold", 3)), None),
    job("neighbours-four", "spec.secureAggregation.neighbours", 4, None),
    job("poly-degree-16384", "spec.secureAggregation.polyModulusDegree", 16384, None),
    job("seed-largest", "spec.model.seed", 2**32 - 1, None),
    job("seed-zero", "spec.model.seed", 0, None),
    job("rollback-to-last-round", "spec.rollback", {"toRound": 20}, None),
    job("rollback-to-round-zero", "spec.rollback", {"toRound": 0}, None),
    job("factory-with-scalar-params", "spec.model",
        {**FACTORY_MODEL, "params": {"depth": 2, "dropout": 0.1, "residual": True, "act": "relu"}}, None),
    job("feature-ranges", "spec.task.featureRanges", [[0, 1], [-2.5, 2.5]], None),
    job("metadata-real-fields", "metadata", EDGE_METADATA, None),
    client("client-alpha-integer", "spec.data.builtin.partition.alpha", 2, None),
    client("client-partition-seed-largest", "spec.data.builtin.partition.seed", 2**32 - 1, None),
    client("client-file-relative-in-claim", "spec.data", {"file": {"path": "site/data.csv", "claimName": "data"}}, None),
    client("client-file-absolute-without-claim", "spec.data", {"file": {"path": "/data/site.csv"}}, None),
]

CASES: list[Case] = INVALID + VALID
assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
