"""The LangChain tools call the broker and the executor: what the model gets back is the
executor's result or the broker's refusal."""

import json
import os
import uuid

from conftest import env
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


def test_the_grants_tool_lists_the_authority(agent):
    tools = {t.name: t for t in seb_tools(agent, env("SEB_EXECUTOR_URL"))}
    assert set(tools) == {"seb_grants", "seb_execute"}
    assert isinstance(tools["seb_grants"], SebGrantsTool)
    listed = json.loads(tools["seb_grants"].invoke({}))
    assert listed["frozen"] is False
    assert [g["operation"] for g in listed["grants"]] == ["demo.write", "demo.write",
                                                         "deploy.rollout", "demo.brief"]
