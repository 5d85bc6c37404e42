"""``SandboxTool``: a verl ``BaseTool`` that runs the model's code in gtpo's sandbox, one session per trajectory.

verl's tool agent loop calls ``create``, ``execute`` and ``release`` around every single call, so a tool
instance lives for one call. gtpo's sandbox keeps notebook state (names defined in one turn exist in the
next), so the session is tied to the trajectory instead: to the ``agent_data`` object verl passes to
``execute``, and it is closed when that object is garbage-collected at the end of the trajectory. Called
without ``agent_data`` (tests, other loops), a session lives for one tool instance, closed on ``release``.

The pool (zygote plus session processes) is started lazily in the process that first executes code: verl
builds its tools in every agent-loop worker, and only workers that run code should pay for a sandbox. The
reply is gtpo's observation text (``gtpo.tools.format_tool_output``). The call's status (ok, error, timeout,
memory, killed) goes to the reward as data, not text: it is appended to ``agent_data.extra_fields
[TOOL_CALLS_KEY]`` with the model turn that made the call, and verl hands a trajectory's ``extra_fields`` to
its reward call, where ``gtpo.integrations.verl_parse`` reads it.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from typing import Any

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from gtpo.integrations.verl_parse import TOOL_CALLS_KEY
from gtpo.sandbox import SandboxLimits, SandboxPool
from gtpo.tools import format_tool_output
from gtpo.types import ExecStatus

TOOL_SCHEMA = OpenAIFunctionToolSchema.model_validate(
    {
        "type": "function",
        "function": {
            "name": "code_interpreter",
            "description": "Run Python code in a stateful sandbox (names persist across calls) and return its output.",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string", "description": "Python code; print what you need."}},
                "required": ["code"],
            },
        },
    }
)


class SandboxTool(BaseTool):
    """verl tool backed by ``gtpo.sandbox.SandboxPool``.

    Tool config (the ``config:`` of examples/verl/tool_config.yaml): ``limits`` (``SandboxLimits`` fields),
    ``max_workers`` (cells running at once per worker process; default: CPU count), ``preload``.
    """

    def __init__(self, config: dict[str, Any], tool_schema: OpenAIFunctionToolSchema | None = None) -> None:
        super().__init__(config, tool_schema or TOOL_SCHEMA)
        self.limits = SandboxLimits(**dict(config.get("limits") or {}))
        self.max_workers = config.get("max_workers")
        self.preload = config.get("preload")
        self._pool: SandboxPool | None = None
        self._lock = threading.Lock()
        self._trajectory_sessions: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._instance_sessions: dict[str, str] = {}

    @property
    def pool(self) -> SandboxPool:
        with self._lock:
            if self._pool is None:
                kwargs: dict[str, Any] = {"limits": self.limits, "max_workers": self.max_workers}
                if self.preload is not None:
                    kwargs["preload"] = tuple(self.preload)
                self._pool = SandboxPool(**kwargs)
            return self._pool

    async def create(self, instance_id: str | None = None, **kwargs: Any) -> tuple[str, ToolResponse]:
        return instance_id or uuid.uuid4().hex, ToolResponse()

    async def execute(
        self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
    ) -> tuple[ToolResponse, float, dict[str, Any]]:
        """Run ``parameters['code']``; reply with gtpo's observation text and record the status for the reward.
        No step reward (GTPO's rewards are computed from the whole trajectory); status and time as metrics."""
        agent_data = kwargs.get("agent_data")
        code = parameters.get("code") if isinstance(parameters, dict) else None
        if not isinstance(code, str):
            record_call(agent_data, "error")
            text = "ValueError: code_interpreter needs a string argument 'code'"
            return ToolResponse(text=text), 0.0, {"status": "error"}
        session = self._session(instance_id, agent_data)
        (result,) = await self.pool.arun_batch([(session, code)])
        record_call(agent_data, result.status)
        metrics = {"status": result.status, "wall_time_s": result.wall_time_s}
        return ToolResponse(text=format_tool_output(result.output)), 0.0, metrics

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        session = self._instance_sessions.pop(instance_id, None)
        if session is not None and self._pool is not None:
            self._pool.close_session(session)

    def close(self) -> None:
        """Stop the sandbox of this process (verl never calls it; the pool also stops at exit)."""
        if self._pool is not None:
            self._pool.close()

    def _session(self, instance_id: str, agent_data: Any) -> str:
        pool = self.pool
        with self._lock:
            if agent_data is None:
                if instance_id not in self._instance_sessions:
                    self._instance_sessions[instance_id] = pool.open_session()
                return self._instance_sessions[instance_id]
            session = self._trajectory_sessions.get(agent_data)
            if session is None:
                session = pool.open_session()
                self._trajectory_sessions[agent_data] = session
                weakref.finalize(agent_data, _close_quietly, weakref.ref(pool), session)
            return session


def record_call(agent_data: Any, status: ExecStatus) -> None:
    """Append ``[turn, status]`` to the trajectory's ``extra_fields``. verl's tool agent loop counts the model
    turns it has generated in ``assistant_turns`` before it runs their tools, so the calling turn is that count
    minus one. Without ``agent_data`` (another loop, a test) there is nowhere to record."""
    if agent_data is None:
        return
    turn = int(getattr(agent_data, "assistant_turns", 0)) - 1
    agent_data.extra_fields.setdefault(TOOL_CALLS_KEY, []).append([turn, status])


def _close_quietly(pool_ref: weakref.ref[SandboxPool], session: str) -> None:
    """Finalizer of a trajectory's ``agent_data``: close its session if the pool is still there."""
    pool = pool_ref()
    if pool is not None:
        pool.close_session(session)  # a no-op once the pool is closed
