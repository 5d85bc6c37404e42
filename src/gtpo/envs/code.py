"""Program synthesis as an environment: write a function, try it in tool turns, submit; hidden tests decide.

The episode follows the math task's protocol (``observation_role = "inline"``): the model writes ```` ```python ````
blocks, its turn stops when a block closes, the block runs in the trajectory's own stateful sandbox session, and
its output continues the model's message as an ```` ```output ```` block. The model can define its function, call
it on the docstring's examples, read a failure and fix it.

The final solution (documented convention):
- a prompt that is Python source (HumanEval's: imports, helpers, the signature and docstring) runs first in the
  model's session, unseen, and first in the graded solution, as HumanEval's harness runs prompt + completion:
  ``from typing import List`` is there when the model's signature names ``List`` (``preamble``).
- the model **submits by ending its message without a code block** (any text: "Done."); the solution is the
  function as its session defines it then: every code block it ran, replayed in order, each on its own (a block
  that raised stops there, as it did in the session, and the next one runs). So the last definition of the
  function wins, helpers defined earlier stay, and a block that only printed something changes nothing.
- on the last allowed turn (``max_turns``) the episode is truncated and the same solution is graded: with
  ``max_turns=1`` (no tool turns) the model's one block is its answer, as in HumanEval's usual evaluation.
- an opened, unclosed block is an invalid call; a block whose run ends in error, timeout, memory or killed is an
  invalid call (GTPO's format penalty), as in the math task.
Reward: 1.0 if every hidden test passes, else 0.0 (``reward="fraction"``: the share of tests passed), on the
step that ends the episode; 0.0 on every other step. The hidden tests run in the hidden-test harness
(``gtpo.sandbox.hidden_tests``: confined processes of its own that never see the model's session, never in the
trainer's process); the model's tool session never holds them either.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from gtpo.config import ConfigError
from gtpo.data.humaneval import load_code_problems, load_humaneval
from gtpo.envs.base import ANSWER, CODE, FINISH, INVALID_ACTION, SUCCESS, TOOL_CALL, EnvFactory
from gtpo.envs.options import parse_source
from gtpo.envs.python_tool import open_sessions
from gtpo.sandbox.hidden_tests import HiddenTestHarness, HiddenTestResult, run_hidden_tests
from gtpo.tools import DEFAULT_INVALID_STATUSES, extract_code, format_tool_output, is_invalid_call
from gtpo.types import CodeExecutor, CodeProblem, Problem

REWARDS = ("all", "fraction")
SYSTEM_PROMPT = (
    "Write the Python function the user asks for. You may run code in a ```python block: its output is shown to "
    "you in an ```output block, and you can test and fix your function. When it is right, end your message "
    "without a code block: the function as your code last defined it is your answer."
)
NO_TOOL_SYSTEM_PROMPT = "Write the Python function the user asks for, complete, in one ```python block."


PYTHON_STARTS = ("def ", "from ", "import ", "class ", "@", "#", '"""')
"""How a prompt that is Python source begins (shown as a code block, run as the session's preamble)."""


def question(problem: CodeProblem) -> str:
    """What the model is shown: the function to write (HumanEval's prompt, or a request in words)."""
    prompt = problem.prompt.rstrip()
    if prompt.lstrip().startswith(PYTHON_STARTS):
        return f"Write this function:\n```python\n{prompt}\n```"
    return prompt


def preamble(problem: CodeProblem) -> str:
    """The prompt when it is Python source that runs (HumanEval's: imports, helpers, the signature with its
    docstring), else "" (a request in words). It runs first in the model's session and first in the graded
    solution, as HumanEval's own harness runs prompt + completion: the imports a signature needs are there."""
    prompt = problem.prompt
    if not prompt.lstrip().startswith(PYTHON_STARTS):
        return ""
    try:
        compile(prompt, "<prompt>", "exec")
    except (SyntaxError, ValueError):
        return ""
    return prompt


def replay(cells: list[str]) -> str:
    """One source that runs ``cells`` in order as the session did: each on its own, an exception ending that cell
    only (so a cell with a syntax error or a failing line does not hide the ones after it)."""
    return (
        f"__gtpo_cells = {cells!r}\n"
        "for __gtpo_cell in __gtpo_cells:\n"
        "    try:\n"
        "        exec(compile(__gtpo_cell, '<cell>', 'exec'), globals())\n"
        "    except BaseException:\n"
        "        pass\n"
    )


class CodeEnv:
    """One trajectory's episode for one code problem; see the module docstring for the rules."""

    observation_role = "inline"
    stop_at_code_block = True
    uses_tools = True

    def __init__(
        self,
        problem: CodeProblem,
        executor: CodeExecutor,
        *,
        max_turns: int | None = None,
        reward: str = "all",
        harness: HiddenTestHarness | None = None,
        invalid_statuses: Collection[str] = DEFAULT_INVALID_STATUSES,
    ) -> None:
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        self.problem = problem
        self.executor = executor
        self.max_turns = max_turns
        self.reward = reward
        self.harness = harness
        self.invalid_statuses = frozenset(invalid_statuses)
        self.session: str | None = None
        self.preamble = preamble(problem)
        self.cells: list[str] = []
        self.turns = 0
        self.result: HiddenTestResult | None = None
        """The hidden tests' verdict on the submitted solution, once graded."""

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self.cells, self.turns, self.result = [], 0, None
        return question(self.problem), {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.turns += 1
        code, has_call, parse_error = extract_code(action)
        info: dict[str, Any] = {TOOL_CALL: has_call, "parse_error": parse_error}
        if code is None:
            info[INVALID_ACTION] = is_invalid_call(has_call, parse_error, None, self.invalid_statuses)
            return self._submit(info, "submitted", terminated=True)
        if self.session is None:
            (self.session,) = open_sessions(self.executor, [Problem(id=self.problem.id, question="", answer="")])
            if self.preamble:
                self.executor.run_batch([(self.session, self.preamble)])
        (result,) = self.executor.run_batch([(self.session, code)])
        self.cells.append(code)
        info.update(
            {
                CODE: code,
                "exec_status": result.status,
                "tool_output": result.output,
                INVALID_ACTION: is_invalid_call(True, False, result.status, self.invalid_statuses),
            }
        )
        if self.max_turns is not None and self.turns >= self.max_turns:
            return self._submit(info, "max_turns", terminated=False)
        info[SUCCESS] = False
        return format_tool_output(result.output), 0.0, False, False, info

    def _submit(self, info: dict[str, Any], finish: str, terminated: bool) -> tuple[str, float, bool, bool, dict]:
        """Grade the session's function on the hidden tests and end the episode."""
        problem = self.problem
        if self.cells:
            cells = [self.preamble, *self.cells] if self.preamble else self.cells
            self.result = run_hidden_tests(
                replay(cells), problem.tests, problem.entry_point, setup=problem.setup, harness=self.harness
            )
        passed = self.result is not None and self.result.status == "passed"
        fraction = self.result.fraction if self.result is not None else 0.0
        reward = fraction if self.reward == "fraction" else float(passed)
        info.update({SUCCESS: passed, FINISH: finish, ANSWER: f"{fraction:.3f} of the hidden tests"})
        if self.result is not None:
            info["hidden_tests"] = {
                "status": self.result.status,
                "passed": self.result.passed,
                "total": self.result.total,
            }
        return "", reward, terminated, not terminated, info

    def close(self) -> None:
        if self.session is not None:
            self.executor.close_session(self.session)
            self.session = None


def code_envs(
    executor: CodeExecutor,
    *,
    max_turns: int | None = None,
    reward: str = "all",
    harness: HiddenTestHarness | None = None,
    invalid_statuses: Collection[str] = DEFAULT_INVALID_STATUSES,
) -> EnvFactory:
    """The factory of ``CodeEnv``s: each problem's ``task`` is its ``CodeProblem``."""
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")

    def make(problem: Problem) -> CodeEnv:
        if not isinstance(problem.task, CodeProblem):
            raise TypeError(f"problem {problem.id!r} is not a code problem (its task is {type(problem.task).__name__})")
        return CodeEnv(
            problem.task,
            executor,
            max_turns=max_turns,
            reward=reward,
            harness=harness,
            invalid_statuses=invalid_statuses,
        )

    return make


def as_problem(problem: CodeProblem, source: str) -> Problem:
    """A ``CodeProblem`` as the rollout's ``Problem``: the question it shows, the hidden rest as its task."""
    return Problem(id=problem.id, question=question(problem), answer="", source=source, task=problem)


# ---------------------------------------------------------------------------------------------- as a source
PREFIX = "code:"
FAMILY = "functions"
HUMANEVAL = "humaneval"


def is_source(name: str) -> bool:
    """``code:functions[?...]`` (the generated family), ``code:humaneval``, ``code:PATH.jsonl[.gz]``."""
    return name.startswith(PREFIX)


def parse(source: str, field: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(what: functions | humaneval | a path, the source's options, the environment's options (reward))."""
    what, options = parse_source(source.removeprefix(PREFIX), source, field, "name code:functions, "
                                 "code:humaneval or code:PATH.jsonl")  # fmt: skip
    env = {key: options.pop(key) for key in ("reward",) if key in options}
    if env.get("reward", "all") not in REWARDS:
        raise ConfigError(f"{field} {source!r}: reward must be one of {REWARDS}")
    return what, options, env


def problems(source: str, field: str, *, heldout: bool, run_seed: int = 0) -> list[Problem]:
    """The code problems of a source: the family's train pool or held-out set (``levels=1,2``, ``problems=N``:
    the train pool's size, or per level held out), HumanEval's 164, or a file's rows."""
    from gtpo.tasks import functions

    what, options, _ = parse(source, field)
    known = {"levels", "problems"} if what == FAMILY else set()
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"{field} {source!r}: unknown option(s) {', '.join(unknown)} (known: {sorted(known) or 'none'}, reward)"
        )
    if what == FAMILY:
        levels = options.get("levels", functions.LEVELS)
        levels = tuple(int(v) for v in str(levels).split(",")) if not isinstance(levels, tuple) else levels
        if not set(levels) <= set(functions.LEVELS):
            raise ConfigError(f"{field} {source!r}: levels must be among {functions.LEVELS}")
        if heldout:
            found = functions.heldout_problems(int(options.get("problems", functions.HELDOUT_PER_LEVEL)), levels)
        else:
            found = functions.train_problems(run_seed, int(options.get("problems", functions.TRAIN_SIZE)), levels)
    elif what == HUMANEVAL:
        found = load_humaneval()
    else:
        if not Path(what).is_file():
            raise ConfigError(f"{field} {source!r}: no such file; give a .jsonl or .jsonl.gz of code problems")
        found = load_code_problems(what)
    return [as_problem(p, source) for p in found]


def reward_of(source: str, field: str) -> str:
    return parse(source, field)[2].get("reward", "all")
