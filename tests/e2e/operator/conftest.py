"""The session's one operator: `helm install` of charts/fedsec-operator (see operator_install.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cluster_fixtures import Kubectl
from operator_install import Release, install_operator, uninstall_operator


@pytest.fixture(scope="session")
def operator_release(kubectl: Kubectl) -> Iterator[Release]:
    release = install_operator(kubectl)
    try:
        yield release
    finally:
        uninstall_operator(kubectl)
