"""The first hour of a new user: what a trained model is, how to prompt it, where things go, what is said.

One short run of the shipped tiny model (1 step, 72 held-out problems) serves most cases: the three ways of
naming the trained model (the run's own last evaluation, ``gtpo eval --checkpoint``, ``gtpo eval --model
RUN/model``) give one number; the docs' exported-model loop (docs/runs.md) writes the first turn ``gtpo eval``
writes; evaluation shows its progress; ``summary.md`` lists every file. The rest are single lines: the recipes'
commands write distinct folders, ``gtpo compare --help`` is its own, a missing relative model path is named as
one, data errors list every built-in task, ``build-tiny`` says what it does and records its prompt.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import run_gtpo as _gtpo

from gtpo import cli
from gtpo.config import ConfigError
from gtpo.eval.cli import EvalConfig, EvalProgress, default_output_dir
from gtpo.eval.cli import main as eval_main
from gtpo.run.metrics import read_metrics

DOCS = Path(__file__).resolve().parents[1] / "docs"
RUN_FLAGS = [
    "--device", "cpu", "--no-progress", "--steps", "1", "--rollout.group-size", "2",
    "--rollout.problems-per-step", "1", "--sandbox.workers", "1", "--eval-every", "1", "--data.eval-limit", "72",
    "--seed", "3",
]  # fmt: skip
"""A run of the shipped tiny model with the embedded default's caps (5 turns of 96 tokens, 512 in all) that
evaluates 72 held-out problems at steps 0 and 1 (two chunks: the engine's 64 and 8) and exports ``model/``; its
seed is not the evaluation's default 0."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("first-hour") / "run"
    cli.main(["train", *RUN_FLAGS, "--output-dir", str(run)])
    return run


def _results(folder: Path) -> dict:
    (row,) = json.loads((folder / "results.json").read_text())
    return row


# --- one trained model, one number -------------------------------------------------------------------------


def test_the_run_its_checkpoint_and_its_exported_folder_score_alike(trained, tmp_path, monkeypatch, capsys):
    """Unset settings follow the run (held-out set and limit, temperature, caps, seed, chunks): the final step's
    evaluation in eval_problems.jsonl, ``--checkpoint RUN`` and ``--model RUN/model`` agree problem by problem.
    Their default output folders differ, so the second does not overwrite the first."""
    monkeypatch.chdir(tmp_path)
    last = read_metrics(trained / "eval_problems.jsonl")[-1]
    assert last["step"] == 1 and len(last["correct"]) == 72
    logged = next(r for r in reversed(read_metrics(trained / "metrics.jsonl")) if "eval/avg@1" in r)
    eval_main(["--checkpoint", str(trained), "--device", "cpu", "--no-progress"])
    eval_main(["--model", str(trained / "model"), "--device", "cpu", "--no-progress"])
    by_checkpoint, by_folder = _results(Path("runs/eval/run")), _results(Path("runs/eval/run-model"))
    assert by_checkpoint["per_problem"] == last["correct"] == by_folder["per_problem"]
    assert by_checkpoint["avg@1"] == pytest.approx(logged["eval/avg@1"]) == by_folder["avg@1"]
    out = capsys.readouterr().out
    assert "the settings of the run that trained it" in out and "seed 3" in out and "limit 72" in out


def test_exported_folder_records_the_run_and_its_prompt(trained):
    from gtpo.tasks.arith import SYSTEM_PROMPT

    folder = trained / "model"
    assert json.loads((folder / "gtpo_run.json").read_text()) == json.loads((trained / "config.json").read_text())
    assert json.loads((folder / "gtpo_prompt.json").read_text())["system_prompt"] == SYSTEM_PROMPT


def test_summary_lists_every_file_of_the_run(trained):
    summary = (trained / "summary.md").read_text()
    for name in ("metrics.jsonl", "eval_problems.jsonl", "curves.png", "samples.jsonl", "model/", "config.json"):
        assert (trained / name.rstrip("/")).exists() and f"`{name}`" in summary, name


# --- the exported model's prompt contract, as docs/runs.md shows it ------------------------------------------


def _contract_snippet() -> str:
    text = (DOCS / "runs.md").read_text()
    return text.split("<!-- prompt-contract -->\n```python\n", 1)[1].split("\n```\n", 1)[0]


def test_the_docs_loop_writes_the_first_turn_gtpo_eval_writes(trained, tmp_path, capsys):
    """The docs' loop (transformers generate, stopped where the python block closes, the output appended inline)
    on the trained folder: its first turn is gtpo eval's greedy first turn on the same problem, and the output
    block it appends is the one the rollout appends."""
    from gtpo.tasks.arith import heldout_problems
    from gtpo.tools import format_tool_output

    folder = trained / "model"
    eval_main(["--model", str(folder), "--temperature", "0", "--limit", "1", "--device", "cpu", "--no-progress",
               "--output-dir", str(tmp_path / "greedy")])  # fmt: skip
    record = json.loads((tmp_path / "greedy" / "trajectories_arith-heldout.jsonl").read_text().splitlines()[0])
    problem = heldout_problems()[0]
    assert record["problem_id"] == problem.id
    code = _contract_snippet()
    code, n = re.subn(r'^folder = ".*"$', f"folder = {str(folder)!r}", code, flags=re.M)
    code, m = re.subn(r'^question = ".*"$', f"question = {problem.question!r}", code, flags=re.M)
    assert n == m == 1
    namespace: dict = {}
    exec(compile(code, "docs/runs.md", "exec"), namespace)
    capsys.readouterr()
    first = record["turns"][0]
    assert namespace["turns"][0] == first["text"]
    if first["tool_output"] is not None and len(record["turns"]) > 1:
        assert namespace["message"].startswith(first["text"] + format_tool_output(first["tool_output"]))


# --- evaluation says what it does and how long it has left ---------------------------------------------------


def test_eval_prints_what_it_scores_and_a_progress_line(trained, tmp_path, capsys):
    eval_main(["--checkpoint", str(trained), "--limit", "3", "--device", "cpu", "--output-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert f"gtpo eval: arith-heldout (3 problems), 1 sample each in float32; results in {tmp_path}" in out
    assert re.search(r"arith-heldout: 100%\S* 3/3 \[\d\d:\d\d<00:00", err), err  # tqdm: done/total [spent<left]


class _TwoSteps:
    """Any action; the episode ends at its second step."""

    def reset(self, seed=None):
        self.steps = 0
        return "Say something twice."

    def step(self, action):
        self.steps += 1
        return "Again.", 0.0, self.steps == 2, False, {}


def test_progress_counts_each_finished_trajectory_and_chunk_ends_set_it_exactly(tiny_tokenizer):
    from conftest import ScriptedSampler

    from gtpo.rollout.episode import rollout
    from gtpo.rollout.spec import EpisodeSpec
    from gtpo.types import Problem

    problems = [Problem(id=f"p{i}", question="", answer="", seed=i) for i in range(3)]
    ended = []
    rollout(problems, 2, ScriptedSampler(tiny_tokenizer, lambda _, k: "hi"), tiny_tokenizer, lambda p: _TwoSteps(),
            EpisodeSpec(system_prompt="s", max_turns=4), on_trajectory_end=lambda: ended.append(1))  # fmt: skip
    assert len(ended) == 6  # each trajectory once, as it ends
    with EvalProgress("set", problems=4, k=2, enabled=False) as progress:
        progress.trajectory_done()
        progress.trajectory_done()
        assert progress.done == 2
        progress.problems_done(2)  # a chunk of 2 problems x 2 samples ended: 4 trajectories, exactly
        assert progress.done == 4
        for _ in range(5):  # more ends than trajectories never pass the total
            progress.trajectory_done()
        assert progress.done == 8


# --- where things go -----------------------------------------------------------------------------------------


def _commands(doc: str) -> list[list[str]]:
    """The gtpo commands of a doc's bash blocks, continuation lines joined and comments dropped."""
    text = (DOCS / doc).read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("#", 1)[0])
            if words[:1] == ["gtpo"]:
                lines.append(words[1:])
    return lines


def _train_dir(argv: list[str]) -> str:
    return cli._parse(argv, "", "gtpo train").config.output_dir


def _eval_dir(argv: list[str]) -> str | None:
    import tyro

    cfg = tyro.cli(EvalConfig, args=argv)
    return None if cfg.compare else (cfg.output_dir or default_output_dir(cfg))


@pytest.mark.parametrize("doc", ["recipes.md", "evaluation.md"])
def test_a_docs_recipe_never_writes_two_runs_or_two_evaluations_into_one_folder(doc):
    commands = _commands(doc)
    runs = [_train_dir(argv[1:]) for argv in commands if argv[0] == "train"]
    evals = [d for argv in commands if argv[0] == "eval" and (d := _eval_dir(argv[1:])) is not None]
    assert runs or evals
    assert len(set(runs)) == len(runs), runs
    assert len(set(evals)) == len(evals), evals


def test_default_eval_folders_are_named_after_what_is_scored():
    def folder(**kw) -> str:
        return default_output_dir(EvalConfig(**kw))

    assert folder(model="smollm2-135m-instruct") == "runs/eval/smollm2-135m-instruct"
    assert folder(model="runs/default/model") == "runs/eval/default-model"
    assert folder(model="runs/default/model-step_0000030/") == "runs/eval/default-model-step_0000030"
    assert folder(checkpoint="runs/smollm2-135m") == "runs/eval/smollm2-135m"
    assert folder(checkpoint="runs/r/checkpoints/step_0000030") == "runs/eval/r-step_0000030"
    assert folder(model="tiny", no_tools=True) == "runs/eval/tiny-no-tools"


# --- what is said ---------------------------------------------------------------------------------------------


def test_compare_help_is_the_comparisons_own(capsys):
    code, out, _ = _gtpo(["compare", "--help"], capsys)
    flat = re.sub(r"[\s│╭╮╰╯─]+", " ", out)
    assert code == 0 and len(out.splitlines()) < 60, len(out.splitlines())
    for flag in ("--variants", "--seeds", "--parallel", "--output-dir", "--overwrite", "--preset"):
        assert flag in flat, flag
    assert "The comparison's folder" in flat and "gtpo train --help" in flat and "15 such runs" in flat
    assert "--rollout." not in flat and "--resume" not in flat.replace("no --resume needed", "")


def test_a_missing_relative_model_path_is_named_before_the_run_folder(tmp_path, monkeypatch, capsys, request):
    """``models/my-model`` (no such folder here) offline: the line names the folder it looked for; it comes before
    the refusal of a folder that holds a run, whose fix would only lead to it."""
    from gtpo.data import hub

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()  # asked again under the offline setting, and forgotten after this test
    request.addfinalizer(hub.hub_reachable.cache_clear)
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    code, _, err = _gtpo(["train", "--model.name-or-path", "models/my-model", "--output-dir", str(run)], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"there is no folder {tmp_path / 'models' / 'my-model'}" in err and "already holds a run" not in err
    code, _, err = _gtpo(["train", "--model.name-or-path", "models/sub/my-model"], capsys)
    assert code == 2 and "'models/sub/my-model': no such folder" in err  # three parts: never a Hub name


def test_an_unknown_data_source_lists_every_builtin_task():
    from gtpo.config import DataConfig
    from gtpo.data.problems import load_train_problems
    from gtpo.tasks import EMBEDDED_TASKS

    with pytest.raises(ConfigError) as raised:
        load_train_problems(DataConfig(train="relai"), seed=0)
    assert all(repr(task) in str(raised.value) for task in EMBEDDED_TASKS), raised.value


def test_build_tiny_says_what_it_does_and_records_the_task_prompt(tmp_path, capsys):
    """A warm start from a model whose chat template brings its own default system prompt (as SmolLM2's does):
    the written folder renders a user message alone under the task's prompt and records it in gtpo_prompt.json."""
    from transformers import AutoTokenizer

    from gtpo.tasks.arith import SYSTEM_PROMPT
    from gtpo.tiny import DEFAULT_MODEL_DIR
    from gtpo.tiny.build import build

    start = tmp_path / "pretrained"
    shutil.copytree(DEFAULT_MODEL_DIR, start)
    own_default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    (start / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n"
        + own_default
        + "<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    before = AutoTokenizer.from_pretrained(start).apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, tokenize=False
    )
    assert own_default in before  # the template as a pretrained model brings it
    out = tmp_path / "warm"
    build(out, steps=2, seed=0, traces=16, measure_n=1, init_from=str(start), batch_size=2)
    err = capsys.readouterr().err
    assert "gtpo build-tiny: 2 supervised steps of 2 traces from pretrained" in err
    assert re.search(r"supervised warm start: 100%\S* 2/2 .*loss=", err), err
    assert f"gtpo build-tiny: wrote {out}" in err
    assert json.loads((out / "gtpo_prompt.json").read_text())["system_prompt"] == SYSTEM_PROMPT
    text = AutoTokenizer.from_pretrained(out).apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, tokenize=False
    )
    assert SYSTEM_PROMPT in text and own_default not in text


def test_a_folder_saved_from_a_saved_folder_holds_one_default_prompt(tmp_path):
    """A model trained from a gtpo folder (a tiny model's next build stage, a run from an exported model) is saved
    again: its template's default prompt is replaced, not stacked before the old one (the shipped code model,
    built in four stages, once carried four)."""
    from transformers import AutoTokenizer

    from gtpo.run.export import save_tokenizer
    from gtpo.tiny import CODE_MODEL_DIR, DEFAULT_MODEL_DIR

    save_tokenizer(AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR), tmp_path / "a", 'first "prompt"')
    save_tokenizer(AutoTokenizer.from_pretrained(tmp_path / "a"), tmp_path / "b", "second prompt")
    saved = AutoTokenizer.from_pretrained(tmp_path / "b")
    assert saved.chat_template.count("set messages") == 1
    text = saved.apply_chat_template([{"role": "user", "content": "q"}], add_generation_prompt=True, tokenize=False)
    assert "second prompt" in text and "first" not in text
    assert (CODE_MODEL_DIR / "chat_template.jinja").read_text().count("set messages") == 1
