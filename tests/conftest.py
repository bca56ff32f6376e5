import pytest

from cluster.harmony import Harmony


@pytest.fixture(scope="session")
def harmony() -> Harmony:
    return Harmony()
