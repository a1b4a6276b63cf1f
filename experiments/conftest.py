"""The shared test fixtures (and the compilation cache) of `tests/conftest.py`, for the tests
that live beside each experiment."""

from tests.conftest import enable_x64  # pylint: disable=unused-import
from tests.conftest import no_compute  # pylint: disable=unused-import
