"""What this release implements. Fields of later features are validated by the models, but a value
that would change behaviour we do not have yet is refused here, loudly, instead of being ignored.

This is the one table to edit when a feature lands.
"""

from __future__ import annotations

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
    if s.defense.rule != "fedavg":
        errors.append(_nyi("spec.defense.rule", f"rule {s.defense.rule!r}", ref, "use 'fedavg'"))
    if s.defense.drift_guard is not None:
        errors.append(_nyi("spec.defense.driftGuard", "the drift guard", ref, "remove the field"))
    if s.defense.reputation:
        errors.append(_nyi("spec.defense.reputation", "reputation", ref, "set it to false"))
    if s.keys.source == "pkcs11":
        errors.append(_nyi("spec.keys.source", "source 'pkcs11'", ref, "use 'file' or 'secret'"))
    return errors

