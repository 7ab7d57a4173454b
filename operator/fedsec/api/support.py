"""What this release implements. Fields of later features are validated by the models, but a value
that would change behaviour we do not have yet is refused here, loudly, instead of being ignored.

This is the one table to edit when a feature lands.
"""

from __future__ import annotations

from fedsec.api.client import FederatedClient
from fedsec.api.errors import FieldError
from fedsec.api.job import FederatedJob

IMPLEMENTED_MODES = frozenset({"none", "secagg"})


def _nyi(path: str, what: str, obj: str, supported: str) -> FieldError:
    return FieldError(path, f"{what} is not implemented in this release of fedsec; {supported}", obj=obj)


def unsupported_in_job(job: FederatedJob) -> list[FieldError]:
    s, ref = job.spec, job.ref
    errors: list[FieldError] = []
    if s.secure_aggregation.mode not in IMPLEMENTED_MODES:
        errors.append(
            _nyi(
                "spec.secureAggregation.mode",
                f"mode {s.secure_aggregation.mode!r}",
                ref,
                f"supported: {', '.join(sorted(IMPLEMENTED_MODES))}",
            )
        )
    if s.privacy.mechanism != "none":
        errors.append(_nyi("spec.privacy.mechanism", f"mechanism {s.privacy.mechanism!r}", ref, "use 'none'"))
    if s.defense.rule != "fedavg":
        errors.append(_nyi("spec.defense.rule", f"rule {s.defense.rule!r}", ref, "use 'fedavg'"))
    if s.defense.drift_guard is not None:
        errors.append(_nyi("spec.defense.driftGuard", "the drift guard", ref, "remove the field"))
    if s.defense.reputation:
        errors.append(_nyi("spec.defense.reputation", "reputation", ref, "set it to false"))
    if s.keys.source == "pkcs11":
        errors.append(_nyi("spec.keys.source", "source 'pkcs11'", ref, "use 'file' or 'secret'"))
    if s.keys.rotation.every_rounds is not None:
        errors.append(_nyi("spec.keys.rotation.everyRounds", "key rotation", ref, "remove the field"))
    return errors


def unsupported_in_client(client: FederatedClient) -> list[FieldError]:
    s, ref = client.spec, client.ref
    errors: list[FieldError] = []
    policy_default = type(s.policy)()
    if s.policy != policy_default:
        set_fields = [
            (f.alias or n) for n, f in type(s.policy).model_fields.items()
            if getattr(s.policy, n) != getattr(policy_default, n)
        ]
        errors.append(
            _nyi(f"spec.policy.{set_fields[0]}", "site policy enforcement", ref, "remove spec.policy for now")
        )
    if s.privacy.budget is not None:
        errors.append(_nyi("spec.privacy.budget", "the site privacy budget", ref, "remove the field for now"))
    return errors
