"""The math tool-integrated-reasoning episode as an environment: a question, a Python sandbox, a graded answer.

The protocol (SimpleTIR, ToRL): the model reasons and writes a ```` ```python ```` block; its turn stops when the
block closes; the sandbox runs it in the trajectory's own stateful session, and the output continues the model's
message as an ```` ```output ```` block (``observation_role = "inline"``). A turn without a closed block ends the
episode: its last ``\\boxed{}`` is the answer, graded against the problem's reference (math-verify by default).

Rules (documented choices):
- a turn with a closed python block runs it, even if it also has a ``\\boxed{}``: the answer is not final, except
  on the last allowed turn (``max_turns``, the rollout's cap, as Gymnasium's TimeLimit), where the episode is
  truncated and that answer is graded;
- an opened, unclosed block is an unparseable, invalid call, and ends the episode;
- a call is invalid when it cannot be parsed or its run ends in one of ``invalid_statuses`` (default: error,
  timeout, memory, killed): ``info["invalid_action"]``, which GTPO's format penalty reads;
- rewards: 1.0 on the step that ends the episode with a correct answer, 0.0 on every other step.
The session is opened at the first code call (running the problem's hidden setup code, whose output the model
never sees) and closed by ``close``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from gtpo.envs.base import ANSWER, CODE, FINISH, INVALID_ACTION, SUCCESS, TOOL_CALL, EnvFactory
from gtpo.tools import DEFAULT_INVALID_STATUSES, extract_boxed, extract_code, format_tool_output, is_invalid_call
from gtpo.types import CodeExecutor, ExecResult, Problem

GradeFn = Callable[[str | None, str], bool]


class PythonToolEnv:
    """One trajectory's episode for one math problem; see the module docstring for the rules."""

    observation_role = "inline"
    stop_at_code_block = True
    uses_tools = True

    def __init__(
        self,
        problem: Problem,
        executor: CodeExecutor,
        *,
        max_turns: int | None = None,
        grade: GradeFn | None = None,
        invalid_statuses: Collection[str] = DEFAULT_INVALID_STATUSES,
    ) -> None:
        if grade is None:
            from gtpo.data.grading import grade
        self.problem = problem
        self.executor = executor
        self.max_turns = max_turns
        self.grade = grade
        self.invalid_statuses = frozenset(invalid_statuses)
        self.session: str | None = None
        self.turns = 0

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """The question (the seed does not matter: a math problem has one start)."""
        self.turns = 0
        return self.problem.question, {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.turns += 1
        code, has_call, parse_error = extract_code(action)
        answer = extract_boxed(action)
        info: dict[str, Any] = {TOOL_CALL: has_call, ANSWER: answer}
        if code is not None:
            result = self._run(code)
            info.update(
                {
                    CODE: code,
                    "exec_status": result.status,
                    "tool_output": result.output,
                    INVALID_ACTION: is_invalid_call(True, False, result.status, self.invalid_statuses),
                }
            )
            if self.max_turns is None or self.turns < self.max_turns:
                info[SUCCESS] = False
                return format_tool_output(result.output), 0.0, False, False, info
            correct = self._graded(answer)  # the last allowed turn: its answer is final after all
            info.update({SUCCESS: correct, FINISH: "max_turns"})
            return "", float(correct), False, True, info
        info.update(
            {
                "parse_error": parse_error,
                INVALID_ACTION: is_invalid_call(has_call, parse_error, None, self.invalid_statuses),
            }
        )
        correct = self._graded(answer)
        info[SUCCESS] = correct
        if answer is not None:
            info[FINISH] = "answer"
        return "", float(correct), True, False, info

    def close(self) -> None:
        if self.session is not None:
            self.executor.close_session(self.session)
            self.session = None

    def _graded(self, answer: str | None) -> bool:
        return answer is not None and bool(self.grade(answer, self.problem.answer))

    def _run(self, code: str) -> ExecResult:
        if self.session is None:
            (self.session,) = open_sessions(self.executor, [self.problem])
        (result,) = self.executor.run_batch([(self.session, code)])
        return result


def open_sessions(executor: CodeExecutor, problems: Sequence[Problem]) -> list[str]:
    """Open one sandbox session per problem and run each problem's hidden setup code in it, all in one batch.

    The setup (``Problem.setup_code``: a task's table or function that the question refers to) runs before the
    model's first cell; its output is never shown to the model nor appended to the tokens. A failing setup is
    the task's bug, not the model's, so it raises (RuntimeError naming the problem) after closing the sessions.
    """
    sessions = [executor.open_session() for _ in problems]
    setups = [(s, p) for s, p in zip(sessions, problems, strict=True) if p.setup_code]
    results = executor.run_batch([(s, p.setup_code) for s, p in setups]) if setups else []
    for (_, problem), result in zip(setups, results, strict=True):
        if result.status != "ok":
            for session in sessions:
                executor.close_session(session)
            raise RuntimeError(
                f"setup code of problem {problem.id!r} failed in the sandbox ({result.status}): "
                f"{result.output.strip()[-500:]}"
            )
    return sessions


def python_tool_envs(
    executor: CodeExecutor,
    *,
    max_turns: int | None = None,
    grade: GradeFn | None = None,
    invalid_statuses: Collection[str] = DEFAULT_INVALID_STATUSES,
) -> EnvFactory:
    """The factory of ``PythonToolEnv``s over one sandbox (each trajectory gets its own session). ``max_turns``:
    the episode's turn cap (the rollout's), at which a tool-call turn's ``\\boxed{}`` answer is final; None: no
    cap of its own (the rollout's cap then ends the episode without grading that turn)."""

    def make(problem: Problem) -> PythonToolEnv:
        return PythonToolEnv(problem, executor, max_turns=max_turns, grade=grade, invalid_statuses=invalid_statuses)

    return make
