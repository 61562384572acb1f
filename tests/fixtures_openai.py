"""A fixture that starts OpenAI-protocol test servers; registered from tests/conftest.py."""

import contextlib

import pytest

from tests.openai_server import OpenAIServer


@pytest.fixture
def openai_server():
    """`openai_server(responder, **kw)` starts an OpenAIServer; all are stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda responder, **kw: stack.enter_context(OpenAIServer(responder, **kw))
