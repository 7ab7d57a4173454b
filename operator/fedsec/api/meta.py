"""Pieces shared by every resource: the base model, object metadata and label selectors."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

GROUP = "fedsec.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# A uid names files (the local launcher's run and ledger entries): the Kubernetes shape (a UUID), or
# a plain token that cannot leave a directory (no '/', no leading '.', so neither '..' nor a dotfile).
_UID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$|^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


class Spec(BaseModel):
    """Base of every spec model: camelCase on the wire, unknown fields refused, values immutable."""

    model_config = ConfigDict(
        alias_generator=_camel, populate_by_name=True, extra="forbid", frozen=True, str_strip_whitespace=False
    )


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
        raise ValueError(f"label key {key!r} is not a valid Kubernetes label key")
    return key


def check_label_value(value: str) -> str:
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        raise ValueError(f"label value {value!r} is not a valid Kubernetes label value")
    return value


class ObjectMeta(Spec):
    """The part of Kubernetes object metadata fedsec reads; everything else is accepted and ignored."""

    model_config = ConfigDict(alias_generator=_camel, populate_by_name=True, extra="ignore", frozen=True)

    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

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

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            check_label_key(k)
            check_label_value(val)
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


PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
