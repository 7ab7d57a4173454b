"""Errors raised at the manifest boundary: each names the file, the object, the field and what is allowed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One thing wrong with one field of one object."""

    path: str  # dotted field path, e.g. "spec.quorum.minFraction"
    message: str  # what is wrong and what is allowed
    source: str = ""  # "examples/x/job.yaml#2" (file and document number), or "" if unknown
    obj: str = ""  # "FederatedJob/breast-cancer"

    def __str__(self) -> str:
        # An error about a whole file (it is not YAML, it is too large) has no object or field: its
        # line is "file: message", with no empty parts between colons.
        where = ": ".join(p for p in (self.source, self.obj, self.path) if p)
        return f"{where}: {self.message}" if where else self.message


class ManifestError(ValueError):
    """One or more manifests are invalid. ``errors`` lists every problem found, not just the first."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{len(errors)} problem(s) in the manifests:\n{lines}")


class SitesRefused(ManifestError):
    """The manifests are valid, but the selected sites' own terms (policy, privacy budget, ledger)
    leave the job too few sites to run. Raised by ``plan_job``; the CLI exits ``REFUSED`` for it."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(errors)
        lines = "\n".join(f"  - {e}" for e in errors)
        self.args = (f"the sites refused the job (the manifests are valid):\n{lines}",)

    def __str__(self) -> str:
        return str(self.args[0])
