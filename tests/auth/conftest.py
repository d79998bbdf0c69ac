"""Fixtures of the identity tests: a running test identity provider and its users."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.auth.idp import IdentityProvider, User

AUDIENCE = "mlaas4hep-appliance"
GROUP = "cms"


@pytest.fixture(scope="session")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider.running() as provider:
        yield provider


@pytest.fixture(scope="session")
def alice() -> User:
    return User(sub="a1b2c3d4-alice", username="alice", groups=(GROUP, "cms/analysis"))


@pytest.fixture(scope="session")
def bob() -> User:
    return User(sub="e5f6a7b8-bob", username="bob", groups=(GROUP,))


@pytest.fixture(scope="session")
def eve() -> User:
    """Known to the issuer, but not in the group."""
    return User(sub="c9d0e1f2-eve", username="eve", groups=("atlas",))
