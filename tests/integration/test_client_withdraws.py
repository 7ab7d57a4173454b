"""A site that cannot produce an update withdraws from the round instead of crashing or sending garbage.

The client is the real one (data, training, aggregation protocol); only its transport is replaced by a
recorder, because what is under test is the decision, and the wire is tested elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsec.aggregation.base import RoundContext
from fedsec.aggregation.registry import mode_for
from fedsec.protocol.terms import round_seed
from fedsec.runtime import local
from fedsec.runtime.client import SiteClient
from fedsec.runtime.config import ClientConfig
from fedsec.training import models as tmodels
from fedsec.wire import tensors as wire_tensors
from fedsec.wire.proto import round_pb2 as pb
from fedsec_runs import write_job_dir

pytestmark = pytest.mark.integration


@pytest.fixture
def client(tmp_path: Path) -> tuple[SiteClient, list[object]]:
    manifests = write_job_dir(tmp_path / "m", sites=3, quorum={"minClients": 2})
    layout = local.prepare(manifests, tmp_path / "run", None, [])
    local.write_configs(layout, 1)  # the port is never dialled: the transport is recorded
    site = SiteClient(ClientConfig.model_validate_json(layout.client_config("site-0").read_text()))
    sent: list[object] = []

    def record(body: object, round_id: int = 0, phase: str = "") -> pb.Ack:
        sent.append(body)
        return pb.Ack(accepted=True)

    site.call = record  # type: ignore[method-assign]
    return site, sent


PARTICIPANTS = ("site-0", "site-1", "site-2")


def task_with(site: SiteClient, model: dict[str, np.ndarray]) -> pb.Task:
    """Round 1's first task, its advertise request made by the real secure-aggregation server."""
    ctx = RoundContext(job_uid=site.cfg.job_uid, round_id=7, participants=PARTICIPANTS, min_survivors=2,
                       tensor_specs=wire_tensors.specs_of(tmodels.state_to_numpy(site.model)),
                       seed=round_seed(site.cfg.job_uid, 7))
    request = mode_for(site.cfg.job.spec.secure_aggregation).server(ctx).request_for("site-0")
    assert request is not None
    return pb.Task(round_id=7, round_number=1, kind="train", phase="advertise", model=wire_tensors.encode(model),
                   request=request, participants=list(PARTICIPANTS), min_survivors=2, round_seed=ctx.seed)


@pytest.mark.parametrize(
    ("poison", "why"),
    [
        (lambda w: np.full_like(w, np.nan), "a global model holding NaN is refused at decoding"),
        (lambda w: np.full_like(w, 3e38), "weights this large make the training loss infinite"),
    ],
)
def test_site_withdraws_when_it_cannot_produce_an_update(client, poison, why: str) -> None:
    site, sent = client
    model = tmodels.state_to_numpy(site.model)
    model["linear.weight"] = poison(model["linear.weight"])
    site._handle_task(task_with(site, model))  # noqa: SLF001 - the unit under test
    assert len(sent) == 1, why
    assert isinstance(sent[0], pb.Contribution) and sent[0].withdraw and not sent[0].response, why


def test_a_healthy_model_gets_a_real_answer(client) -> None:
    site, sent = client
    site._handle_task(task_with(site, tmodels.state_to_numpy(site.model)))  # noqa: SLF001
    assert len(sent) == 1 and isinstance(sent[0], pb.Contribution)
    assert not sent[0].withdraw and len(sent[0].response) > 0  # the signed secagg key advert
