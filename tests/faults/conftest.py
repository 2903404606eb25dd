"""The fault cases use the end-to-end fixtures (a runtime on the session's PostgreSQL, an HTTP session)."""
from tests.e2e.conftest import http, kafka_runtime, runtime  # noqa: F401  (pytest fixtures)
