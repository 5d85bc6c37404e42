"""The nouns that flow through gtpo: problems, turns, trajectories, execution results.

Plain dataclasses, no behaviour beyond small derived properties. Every stage reads and writes these, so
keeping them here (and nothing else) lets any module import them without pulling in a higher layer.

Vocabulary: a *group* is the G trajectories sampled for one problem; a *turn* is one model message
(reasoning and at most one code block) followed by the tool's output, which is an *observation* and is
never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

ExecStatus = Literal["ok", "error", "timeout", "memory", "killed"]
"""Outcome of one sandbox call. Anything but "ok" is the model's code misbehaving, never an exception."""

FinishReason = Literal["answer", "max_turns", "length", "eos", "terminated", "truncated", "env_error", "env_timeout"]
"""Why a trajectory ended: a ``\\boxed{}`` answer, the turn cap, the token budget, EOS (the model ended its message
with no answer), the environment's ``terminated`` or ``truncated``, or an environment call that raised or ran out
of time (``Trajectory.error`` says which)."""


@dataclass(frozen=True)
class Problem:
    """One question with its reference answer. ``id`` is stable across epochs (used for grouping and logs)."""

    id: str
    question: str
    answer: str
    source: str = ""
    setup_code: str = ""
    """Hidden Python run in each trajectory's sandbox session before the model's first cell (a task's table or
    function the question refers to); its output never reaches the model. Empty: nothing to run."""
    seed: int | None = None
    """The environment's reset seed, for problems that are instances of an environment (a game and its seed);
    None for question/answer problems."""
    task: Any = None
    """What the environment needs beyond the question and never shows the model (a code problem's hidden tests:
    a ``CodeProblem``); None for the others."""


@dataclass(frozen=True)
class CodeProblem:
    """One function to write, its hidden tests, and (when known) a reference solution."""

    id: str
    prompt: str
    """What the model is shown: HumanEval's signature and docstring, or an MBPP-style request in words."""
    tests: str
    """Python source defining ``check(candidate)``; never shown to the model."""
    entry_point: str
    """The name of the function the solution must define."""
    setup: str = ""
    """Python the tests need in scope, run before them in the test runner only (HumanEval: the prompt, whose
    helpers some tests call; MBPP: its test imports)."""
    reference: str = ""
    """A complete solution that passes the tests (HumanEval: prompt + canonical solution); never shown to
    the model. Empty when the file has none."""
    source: str = ""
    difficulty: int = 0
    """The generator's level for generated problems; 0 when unknown."""


@dataclass(frozen=True)
class ExecResult:
    """What the sandbox returns for one code cell: the text the model will read, and how it went."""

    status: ExecStatus
    output: str
    wall_time_s: float = 0.0
    session_restarted: bool = False
    """True when the session's process was replaced (killed at a limit, crashed, left threads running, or
    died while idle): the names earlier cells defined are gone, and ``output`` says so in one line."""


class CodeExecutor(Protocol):
    """What the rollout needs from a sandbox: stateful sessions and a batched run.

    ``gtpo.sandbox.SandboxPool`` implements it; tests may pass a scripted executor.
    """

    def open_session(self) -> str: ...

    def run_batch(self, calls: list[tuple[str, str]]) -> list[ExecResult]:
        """Run ``(session_id, code)`` pairs concurrently; results in input order."""
        ...

    def close_session(self, session_id: str) -> None: ...


@dataclass
class Turn:
    """One model message plus the tool output after it: everything turn rewards need.

    ``invalid_call`` is decided by ``gtpo.tools.is_invalid_call`` from ``has_tool_call``/``parse_error``/
    ``exec_status`` and the configured set of statuses that count as invalid.
    """

    text: str
    """The model's text for this turn, exactly as decoded from its sampled tokens."""
    code: str | None = None
    """Code of the (last complete) python block; None if the turn made no tool call."""
    has_tool_call: bool = False
    """True if the turn opened a python code block (complete or not)."""
    parse_error: bool = False
    """True if a code block was opened but never closed (unparseable call)."""
    exec_status: ExecStatus | None = None
    """Sandbox status, None when nothing ran."""
    tool_output: str | None = None
    """What the tool printed for this turn's call (before formatting as an observation), None if nothing ran."""
    invalid_call: bool = False
    """The environment flagged the action as invalid (``info["invalid_action"]``): GTPO's format penalty."""
    final_answer: str | None = None
    """Content of the last ``\\boxed{}`` in this turn, if any."""
    num_model_tokens: int = 0
    reward: float = 0.0
    """The environment's reward for this turn's step (GTPO's turn reward is built from it)."""
    observation: str | None = None
    """The environment's observation after this turn, as it returned it; None before its step came back."""


@dataclass
class Trajectory:
    """One sampled multi-turn episode with its token bookkeeping.

    Token lists are aligned and cover prompt + model tokens + observation tokens:
    ``loss_mask`` is 1 only on model-sampled tokens; ``turn_ids`` is the 0-based turn index on model tokens
    and -1 on prompt and observation tokens; ``sampler_logprobs`` is the sampler's log-prob on model tokens
    and 0.0 elsewhere.
    """

    problem: Problem
    group_id: int
    turns: list[Turn] = field(default_factory=list)
    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    turn_ids: list[int] = field(default_factory=list)
    sampler_logprobs: list[float] = field(default_factory=list)
    prompt_len: int = 0
    opening: str = ""
    """The environment's first observation, the user message of the prompt (the math task's question)."""
    finish_reason: FinishReason = "eos"
    final_answer: str | None = None
    correct: bool = False
    """The episode succeeded: the last step's ``info["success"]`` (for the math task: a correct final answer)."""
    uses_tools: bool = True
    """The environment offers a tool (GTPO's first-turn no-call penalty applies)."""
    error: str | None = None
    """Why an environment call failed, for trajectories that ended with "env_error" or "env_timeout"."""

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def code(self) -> str:
        """All of the trajectory's code, concatenated: the input to code-similarity reward shaping."""
        return "\n".join(t.code for t in self.turns if t.code)
