"""Pieces shared by every resource: the base model, object metadata and label selectors."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, WithJsonSchema, field_validator,
)

GROUP = "fedsec.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# A uid names files (the local launcher's run and ledger entries): the Kubernetes shape (a UUID), or
# a plain token that cannot leave a directory (no '/', no leading '.', so neither '..' nor a dotfile).
_UID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$|^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


class Spec(BaseModel):
    """Base of every spec model: camelCase on the wire, unknown fields refused, values immutable.

    Types are strict because the API server's are: ``"20"`` is not an integer there and ``true`` is
    not a number, so pydantic's coercions would make ``fedsec validate`` accept what ``kubectl``
    refuses. NaN and infinities cannot be written in JSON at all (kubectl refuses them).
    """

    model_config = ConfigDict(
        alias_generator=_camel, populate_by_name=True, extra="forbid", frozen=True, str_strip_whitespace=False,
        strict=True, allow_inf_nan=False,
    )


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One CEL rule for the API server (an ``x-kubernetes-validations`` entry). Declare it in the model,
    beside the pydantic validator that enforces the same rule, with ``kubernetes(...)``;
    ``field_path`` (".a.b", relative to the object) makes the server name the field pydantic names."""
    out = {"rule": rule, "message": message}
    if field_path is not None:
        out["fieldPath"] = field_path
    return out


def kubernetes(*rules: dict[str, str], **schema: Any) -> dict[str, Any]:
    """``json_schema_extra`` for a model or a field: its CEL rules, and any other schema keywords
    (``not``) that only the API server reads. ``fedsec.api.crd`` copies them into the CRDs."""
    out: dict[str, Any] = dict(schema)
    if rules:
        out["x-kubernetes-validations"] = list(rules)
    return out


def _whole_number(value: Any) -> Any:
    # kubectl turns YAML into JSON through float64, so `rounds: 20.0` reaches the API server as 20 and
    # is accepted there; 20.5 and "20" are not, and strict validation refuses them below.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_whole_number)]
"""An integer as Kubernetes reads one: a whole JSON number; never a string, a boolean or 1.5."""


def check_dns_label(value: str, what: str = "name") -> str:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(
            f"{what} {value!r} must be a DNS-1123 label: at most 63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def check_label_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if (prefix and (len(prefix) > 253 or not _LABEL_PREFIX.match(prefix))) or len(name) > 63 or not _LABEL_NAME.match(name):
        raise ValueError(
            f"key {key!r} is not a valid Kubernetes label or annotation key: an optional DNS-subdomain prefix and "
            "'/', then a name of at most 63 letters, digits, '-', '_' or '.' starting and ending with a letter or digit"
        )
    return key


def check_label_value(value: str) -> str:
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        raise ValueError(
            f"label value {value!r} is not a valid Kubernetes label value: empty, or at most 63 letters, digits, "
            "'-', '_' or '.' starting and ending with a letter or digit"
        )
    return value


class OwnerReference(Spec):
    """An entry of metadata.ownerReferences, as Kubernetes defines it."""

    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(Spec):
    """Kubernetes object metadata: the real ObjectMeta fields and no others, so that a typo such as
    ``lables`` is refused (as kubectl refuses it) instead of silently dropping the labels. fedsec reads
    name, namespace, uid, generation, labels and annotations; the rest is accepted as Kubernetes writes
    it (``kubectl get -o yaml`` output validates)."""

    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: Int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    resource_version: str | None = None
    # YAML reads an unquoted timestamp as a datetime; kubectl sends it on as the same string.
    creation_timestamp: str | datetime | None = Field(None, union_mode="left_to_right")
    deletion_timestamp: str | datetime | None = Field(None, union_mode="left_to_right")
    deletion_grace_period_seconds: Int | None = None
    finalizers: list[str] = Field(default_factory=list)
    generate_name: str | None = None
    managed_fields: list[dict[str, Any]] = Field(default_factory=list)
    owner_references: list[OwnerReference] = Field(default_factory=list)
    self_link: str | None = None

    @field_validator("name", "namespace")
    @classmethod
    def _dns(cls, v: str) -> str:
        return check_dns_label(v)

    @field_validator("uid")
    @classmethod
    def _uid(cls, v: str | None) -> str | None:
        if v is not None and not _UID.fullmatch(v):
            raise ValueError(
                f"uid {v[:80]!r} must be a Kubernetes uid (a UUID) or 1-128 letters, digits, '.', '_' or '-' "
                "not starting with '.': it becomes a file name. Remove it to have one generated"
            )
        return v

    @field_validator("labels", "annotations", mode="before")
    @classmethod
    def _strings(cls, v: Any, info: ValidationInfo) -> Any:
        # `version: 2` or `enabled: true` is the usual slip; Kubernetes wants every value a string.
        if isinstance(v, dict):
            for k, val in v.items():
                if not isinstance(k, str) or not isinstance(val, str):
                    raise ValueError(
                        f"{info.field_name} {k!r}: {val!r} must be a string (quote numbers and booleans: \"{val}\")"
                    )
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            check_label_key(k)
            check_label_value(val)
        return v

    @field_validator("annotations")
    @classmethod
    def _annotation_keys(cls, v: dict[str, str]) -> dict[str, str]:
        # The API server checks annotation keys by the label-key rule (a qualified name); values are free.
        for k in v:
            check_label_key(k)
        return v


class LabelSelectorRequirement(Spec):
    """One requirement of a label selector."""

    key: str = Field(description="the label key")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list, description="the values for In and NotIn")

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        return check_label_key(v)

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        present = self.key in labels and labels[self.key] in self.values
        return present if self.operator == "In" else not present


class LabelSelector(Spec):
    """The Kubernetes label selector: every matchLabels pair and every expression must hold."""

    match_labels: dict[str, str] = Field(default_factory=dict, description="labels that must all be equal")
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, description="requirements that must all hold"
    )

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            e.matches(labels) for e in self.match_expressions
        )


def bounded_int(*, ge: int | None = None, le: int | None = None) -> Any:
    """``Int`` with bounds. The bounds go inside the whole-number coercion: outside it, pydantic
    would still check them but write them into the JSON schema (hence the CRD) as unknown keywords."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_whole_number)]


PositiveInt = bounded_int(ge=1)
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
MAX_SEED = 2**32 - 1
# numpy's and torch's generators take seeds in [0, 2^32); a seed outside would fail at run time.
Seed = bounded_int(ge=0, le=MAX_SEED)

# A model factory as a job names it in spec.model.factory and a site lists it: a dotted module path,
# a colon, a function name. ASCII identifiers only, so that the API server (ECMA regex) and pydantic
# refuse the same strings.
FACTORY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
_FACTORY = re.compile(FACTORY_PATTERN)


def check_factory(value: str) -> str:
    if len(value) > 512 or not _FACTORY.fullmatch(value):
        raise ValueError(
            f"factory {value[:80]!r} must look like 'package.module:function' (ASCII letters, digits and '_'; "
            "at most 512 characters; no globs)"
        )
    return value


# The schema is written out for the API server; pydantic checks the same with a message a user can read.
FactoryRef = Annotated[str, AfterValidator(check_factory), WithJsonSchema(
    {"type": "string", "minLength": 3, "maxLength": 512, "pattern": FACTORY_PATTERN}
)]
