"""The LangChain tools call the broker and the executor: what the model gets back is the
executor's result or the broker's refusal."""

import json
import os
import uuid

from conftest import env
from seb_client import Client
from seb_client.langchain import SebExecuteTool, SebGrantsTool, seb_tools


def test_the_tool_runs_through_broker_and_executor(agent):
    tool = SebExecuteTool(client=agent, executor_url=env("SEB_EXECUTOR_URL"))
    name = f"lc-{uuid.uuid4().hex[:8]}.txt"
    answer = json.loads(tool.invoke({"operation": "demo.write", "resource": "demo/files",
                                     "params": {"name": name, "text": "from langchain"},
                                     "justification": "langchain test"}))
    assert answer["status"] == "executed" and answer["exit_code"] == 0
    with open(os.path.join(env("SEB_OUT_DIR"), name)) as f:
        assert f.read() == "from langchain"
    # The request is the broker's: the agent can look it up by the id the tool returned.
    assert agent.status(answer["request_id"])["status"] == "granted"


def test_a_refusal_is_the_tools_answer_not_a_crash(agent):
    tool = SebExecuteTool(client=agent, executor_url=env("SEB_EXECUTOR_URL"))
    answer = tool.invoke({"operation": "db.drop", "resource": "prod/payments/db", "params": {}})
    assert answer.startswith("operation_not_granted:")


def test_parameters_json_cannot_carry_are_refused_before_anything_is_sent(agent):
    # A model's tool call parsed with json.loads may hold NaN or an infinity.
    tool = SebExecuteTool(client=agent, executor_url=env("SEB_EXECUTOR_URL"))
    for bad in (float("nan"), float("inf")):
        answer = tool.invoke({"operation": "demo.write", "resource": "demo/files",
                              "params": {"name": "nan.txt", "text": "x", "n": bad}})
        assert answer.startswith("invalid_params:"), answer
    assert not os.path.exists(os.path.join(env("SEB_OUT_DIR"), "nan.txt"))


def test_the_grants_tool_lists_the_authority(agent):
    tools = {t.name: t for t in seb_tools(agent, env("SEB_EXECUTOR_URL"))}
    assert set(tools) == {"seb_grants", "seb_execute"}
    assert isinstance(tools["seb_grants"], SebGrantsTool)
    listed = json.loads(tools["seb_grants"].invoke({}))
    assert listed["frozen"] is False
    assert [g["operation"] for g in listed["grants"]] == ["demo.write", "demo.write",
                                                         "deploy.rollout", "demo.brief"]


def test_an_unreachable_broker_or_executor_is_an_answer_not_a_crash(agent):
    # Nothing listens on port 1: the model is told so and can re-plan.
    with Client("https://127.0.0.1:1", env("SEB_ROOT"), env("SEB_AGENT_CERT"),
                env("SEB_AGENT_KEY")) as nowhere:
        for tool in seb_tools(nowhere, env("SEB_EXECUTOR_URL")):
            args = {} if tool.name == "seb_grants" else {
                "operation": "demo.write", "resource": "demo/files",
                "params": {"name": "never.txt", "text": "x"}}
            assert tool.invoke(args).startswith("broker_unreachable:")
    tool = SebExecuteTool(client=agent, executor_url="https://127.0.0.1:1")
    answer = tool.invoke({"operation": "demo.write", "resource": "demo/files",
                          "params": {"name": "unrun.txt", "text": "x"}})
    assert answer.startswith("executor_unreachable:")
    assert not os.path.exists(os.path.join(env("SEB_OUT_DIR"), "unrun.txt"))


def test_an_action_that_ran_and_failed_is_an_error_for_the_model(agent):
    tool = SebExecuteTool(client=agent, executor_url=env("SEB_EXECUTOR_URL"))
    # `seb demo-write` refuses a name that is not a plain file name: the action exits 1.
    answer = tool.invoke({"operation": "demo.write", "resource": "demo/files",
                          "params": {"name": "../escape.txt", "text": "x"}})
    assert answer.startswith("action_failed: "), answer
    outcome = json.loads(answer[len("action_failed: "):])
    assert outcome["succeeded"] is False and outcome["exit_code"] == 1
