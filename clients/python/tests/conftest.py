"""The deployment these tests run against is started by the Rust test
``tests/agents.rs::python_client_verifier_and_langchain_tool_against_a_real_broker_and_executor``
(a real broker on its own SoftHSM2 token and a real ``seb exec``), which passes it in the
environment. Without it the tests fail; they are never skipped."""

import os

import pytest

from seb_client import Client


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run these tests through `cargo nextest run "
                           "--test agents` (tests/agents.rs starts the broker and executor)")
    return value


@pytest.fixture
def agent():
    with Client(env("SEB_BROKER_URL"), env("SEB_ROOT"), env("SEB_AGENT_CERT"),
                env("SEB_AGENT_KEY")) as c:
        yield c


@pytest.fixture
def other_agent():
    with Client(env("SEB_BROKER_URL"), env("SEB_ROOT"), env("SEB_OTHER_CERT"),
                env("SEB_OTHER_KEY")) as c:
        yield c


def approver(name: str) -> Client:
    return Client(env("SEB_BROKER_URL"), env("SEB_ROOT"), env(f"SEB_{name}_CERT"),
                  env(f"SEB_{name}_KEY"))


def read(name: str) -> bytes:
    with open(env(name), "rb") as f:
        return f.read()
