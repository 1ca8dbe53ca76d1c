"""LangChain tools whose calls go through the broker (``pip install 'seb-client[langchain]'``).

``SebExecuteTool`` asks the broker for a token, waits for approvals when the grant needs them,
and presents the token with the exact parameters to the executor; the agent's model never
holds a credential, only the tool's answer. ``SebGrantsTool`` tells the model what it may ask
for (``GET /v1/grants``), so that it plans inside its authority. A refusal comes back to the
model as the tool's output (``code: message``), not as a crash, so it can re-plan.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, ConfigDict, Field

from .client import Client, Pending
from .errors import ActionFailed, SebError


class ExecuteInput(BaseModel):
    operation: str = Field(description="The operation, exactly as granted, e.g. deploy.rollout")
    resource: str = Field(description="The resource path, e.g. prod/payments/api")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="The operation's parameters (a JSON object)")
    justification: Optional[str] = Field(default=None,
                                         description="Why, for the audit log and approvers")


class SebExecuteTool(BaseTool):
    """Runs one operation through the broker and an executor."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = "seb_execute"
    description: str = (
        "Run an operation on production through the execution broker. The broker checks it "
        "against this agent's grants (see seb_grants) and may require human approval. "
        "Returns the executor's result, or the refusal code and reason.")
    args_schema: type[BaseModel] = ExecuteInput
    handle_tool_error: bool = True
    client: Client
    executor_url: str
    approval_timeout: float = 300.0

    def _run(self, operation: str, resource: str, params: Optional[dict] = None,
             justification: Optional[str] = None, run_manager: Any = None) -> str:
        params = params or {}
        try:
            answer = self.client.request(operation, resource, params, justification)
            if isinstance(answer, Pending):
                answer = self.client.wait(answer.request_id, timeout=self.approval_timeout)
            result = self.client.execute(self.executor_url, answer.token, params)
            succeeded = True
        except ActionFailed as e:
            if e.answer is None:
                raise ToolException(f"{e.code}: {e.message}") from e
            result, succeeded = e.answer, False
        except SebError as e:
            raise ToolException(f"{e.code}: {e.message}") from e
        receipt = result.get("receipt", {}).get("body", {})
        outcome = {"status": result.get("status"), "succeeded": succeeded,
                   "request_id": answer.request_id, "exit_code": receipt.get("exit_code"),
                   "timed_out": receipt.get("timed_out"), "stdout": result.get("stdout", ""),
                   "stderr": result.get("stderr", "")}
        if not succeeded:
            # It ran and failed: an error the model sees as one, with what the action said.
            raise ToolException("action_failed: " + json.dumps(outcome))
        return json.dumps(outcome)


class SebGrantsTool(BaseTool):
    """Lists what this agent may ask the broker for."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = "seb_grants"
    description: str = (
        "List the operations, resources and parameter constraints this agent may ask the "
        "execution broker for, which need human approval, and whether issuance is frozen.")
    handle_tool_error: bool = True
    client: Client

    def _run(self, run_manager: Any = None) -> str:
        try:
            authority = self.client.grants()
        except SebError as e:
            raise ToolException(f"{e.code}: {e.message}") from e
        return json.dumps({
            "frozen": authority.frozen,
            "grants": [{"operation": g.operation, "resource": g.resource, "params": g.params,
                        "params_any": g.params_any, "approval": g.approval}
                       for g in authority.grants],
        })


def seb_tools(client: Client, executor_url: str) -> list[BaseTool]:
    """Both tools, for an agent's tool list."""
    return [SebGrantsTool(client=client), SebExecuteTool(client=client, executor_url=executor_url)]
