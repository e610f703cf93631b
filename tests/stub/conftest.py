"""Fixtures for the stand-in's tests; the `stub` itself comes from tests/conftest.py."""

import logging

import pytest
from tornado.simple_httpclient import SimpleAsyncHTTPClient


@pytest.fixture(autouse=True)
def no_errors_logged(caplog):
    """A client vanishing or a cut stream must not log tracebacks."""
    yield
    errors = [
        r
        for r in caplog.records
        # tornado.access logs 5xx answers (chat_status) at ERROR on purpose.
        if r.levelno >= logging.ERROR and r.name != "tornado.access"
    ]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
def http(io_loop):
    client = SimpleAsyncHTTPClient(force_instance=True)
    yield client
    client.close()
