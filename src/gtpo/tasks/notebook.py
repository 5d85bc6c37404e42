"""Trusted cells run in-process and shown exactly as a sandbox session shows them, for writing warm-start traces.

The hidden-state tasks' traces (``multistep_traces``, ``relay_traces``) call their tools through ``TraceWriter``,
so what a trace shows the model after a call is the text a rollout will show: the sandbox's cell names, value
display and short tracebacks (``gtpo.sandbox.cell``). Only project-written code runs here, never a model's.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import random
from typing import Any

from gtpo.sandbox.cell import exec_cell, short_traceback
from gtpo.sandbox.session import join_output
from gtpo.tasks.traces import Trace
from gtpo.tools import format_tool_output


class Notebook:
    """Trusted cells run in-process, shown as a sandbox session shows them (same ``<cell N>`` numbering: the
    hidden setup is cell 1 when there is one)."""

    def __init__(self, setup_code: str = "") -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self.cells_run = 0
        if setup_code:
            output = self.run(setup_code)
            if output:
                raise RuntimeError(f"setup code printed or failed: {output}")

    def run(self, code: str) -> str:
        self.cells_run += 1
        out = io.StringIO()
        error = ""
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                exec_cell(code, f"<cell {self.cells_run}>", self.namespace, out)
        except Exception as err:  # the "fix" traces fail on purpose
            error = short_traceback(err)
        return join_output(out.getvalue(), error)


class TraceWriter:
    """One trace being written: model turns, each tool call run in the problem's notebook and its output shown."""

    def __init__(self, question: str, answer: int | str, setup_code: str) -> None:
        self.question, self.answer, self.setup_code = question, str(answer), setup_code
        self.segments: list[tuple[str, str]] = []
        self._notebook: Notebook | None = None

    def call(self, code: str) -> str:
        """Write ``code`` as a python block, run it, show its output; returns the output, stripped."""
        if self._notebook is None:
            self._notebook = Notebook(self.setup_code)
        self.segments.append(("model", f"```python\n{code}\n```"))
        output = self._notebook.run(code)
        self.segments.append(("tool", format_tool_output(output)))
        return output.strip()

    def boxed(self, value: int | str) -> Trace:
        """End with ``\\boxed{value}``: the finished trace."""
        self.segments.append(("model", f"\\boxed{{{value}}}"))
        return Trace(self.question, self.answer, self.segments, self.setup_code)


def misspell(name: str, rng: random.Random) -> str:
    i = rng.randrange(len(name))
    letter = rng.choice([c for c in "aeioulnrst" if c != name[i]])
    return name[:i] + letter + name[i + 1 :]
