"""The trained policy as a Hugging Face model folder: what ``gtpo train`` leaves in ``RUN/model`` and what
``gtpo export`` writes from any checkpoint.

The folder holds ``config.json``, ``model.safetensors``, ``generation_config.json`` and the tokenizer with its
chat template, so ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` (and vLLM or verl,
which read the same files) load it with no gtpo code. A LoRA policy is either merged into the base weights
(``merged``: a plain model) or saved as a peft adapter (``adapter``: ``adapter_config.json`` +
``adapter_model.safetensors``, loaded on top of the base with ``PeftModel.from_pretrained``). The folder is
written beside its destination and renamed into place, so a killed export never leaves half a model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from gtpo import components
from gtpo.config import ConfigError, from_dict
from gtpo.distributed import unwrap_model
from gtpo.envs import sources
from gtpo.run.checkpoint import CHECKPOINT_DIR, latest_checkpoint, read_file

LoraExport = Literal["merged", "adapter"]
MODEL_DIR = "model"
"""The final policy's folder inside a run directory."""
PROMPT_FILE = "gtpo_prompt.json"
"""Beside the model: the system prompt it was trained with (also the chat template's default)."""
RUN_FILE = "gtpo_run.json"
"""Beside the model: the resolved settings of the run that trained it (its ``config.json``), so that ``gtpo eval
--model FOLDER`` samples and scores as the run's own evaluations did."""


_PREFIX_HEAD = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}{%- set messages = [{'role': 'system', 'content': "
)
_PREFIX_TAIL = "}] + messages -%}{%- endif -%}"
_EARLIER_DEFAULT = re.compile(re.escape(_PREFIX_HEAD) + r'"(?:[^"\\]|\\.)*"' + re.escape(_PREFIX_TAIL))
"""The prefix this module wrote into a folder gtpo saved before (any prompt as a JSON string literal)."""


def with_default_system_prompt(template: str, system_prompt: str) -> str:
    """A chat template that puts ``system_prompt`` first when the messages bring no system message.

    The policy learned the tool protocol under that prompt; a user of the plain folder who sends only a user
    message (``apply_chat_template([{"role": "user", ...}])``) gets the prompt the model was trained with. The
    prompt goes in as a Jinja string literal (JSON's escapes are Jinja's), before the template's own text. A
    template gtpo saved before (a model trained from a gtpo folder, a tiny model's next build stage) already
    starts with such a prefix: it is replaced, not stacked (the new one would win anyway)."""
    while match := _EARLIER_DEFAULT.match(template):
        template = template[match.end() :]
    return _PREFIX_HEAD + json.dumps(system_prompt) + _PREFIX_TAIL + template


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def save_model_folder(
    model: torch.nn.Module,
    tokenizer: Any,
    out: str | Path,
    lora: LoraExport = "merged",
    write: bool = True,
    system_prompt: str | None = None,
    run_config: dict[str, Any] | None = None,
) -> Path | None:
    """Write ``model`` (plain, DDP, FSDP2 or peft-wrapped) and ``tokenizer`` to ``out`` as an HF folder;
    ``system_prompt`` (the one it was trained with) becomes the chat template's default and ``PROMPT_FILE``;
    ``run_config`` (the training run's resolved config) goes to ``RUN_FILE``.

    Under torchrun every rank must call this (FSDP gathers the shards); only ``write=True`` writes. Returns
    the folder on the writing rank.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from gtpo.model.policy import inference_weights

    module = unwrap_model(model)
    adapter = lora == "adapter" and is_lora(module)
    if is_lora(module) and not adapter:
        weights = inference_weights(module)  # merged into a copy under the base model's plain names
    else:  # a full model's own names, or peft's for an adapter; FSDP shards gathered onto rank 0's CPU
        weights = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not write:
        return None
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if adapter:
        module.save_pretrained(str(tmp), state_dict=weights)
    else:
        base = module.get_base_model() if is_lora(module) else module
        base.save_pretrained(str(tmp), state_dict={k: v.contiguous() for k, v in weights.items()})
    save_tokenizer(tokenizer, tmp, system_prompt)
    if run_config is not None:
        (tmp / RUN_FILE).write_text(json.dumps(run_config, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def save_tokenizer(tokenizer: Any, folder: Path, system_prompt: str | None) -> None:
    """The tokenizer, its chat template defaulting to ``system_prompt`` (recorded in ``PROMPT_FILE``); the live
    tokenizer is left as it was. A template's own default (SmolLM2's "You are a helpful AI assistant named
    SmolLM") is replaced: the model learned the tool protocol under ``system_prompt``, not under that one."""
    template = getattr(tokenizer, "chat_template", None)
    if system_prompt is None or not isinstance(template, str):
        tokenizer.save_pretrained(str(folder))
        return
    tokenizer.chat_template = with_default_system_prompt(template, system_prompt)
    try:
        tokenizer.save_pretrained(str(folder))
    finally:
        tokenizer.chat_template = template
    how = "the chat template adds it when the messages have no system message; pass your own to replace it"
    (folder / PROMPT_FILE).write_text(json.dumps({"system_prompt": system_prompt, "note": how}, indent=2) + "\n")


def export_final_policy(
    model: torch.nn.Module, tokenizer: Any, run_dir: Path, mode: str, write: bool, system_prompt: str | None = None
) -> Path | None:
    """The end of ``gtpo train``: ``RUN/model`` per the ``export`` setting ("merged", "adapter" or "none")."""
    if mode == "none":
        return None
    lora: LoraExport = "adapter" if mode == "adapter" else "merged"
    out = Path(run_dir) / MODEL_DIR
    settings = _run_config(Path(run_dir)) if write else None
    return save_model_folder(
        model, tokenizer, out, lora=lora, write=write, system_prompt=system_prompt, run_config=settings
    )


def _run_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's resolved config (``RUN/config.json``), or None where there is none."""
    path = run_dir / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def resolve_checkpoint(path: str | Path, flag: str = "") -> Path:
    """A run directory (its newest complete checkpoint) or one checkpoint folder, checked for what loading
    needs; ``flag`` names the option in errors."""
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    if not path.exists():
        raise ConfigError(f"{where}: no such folder; give a run directory (runs/NAME) or one of its checkpoints")
    if (path / "config.json").exists() and (path / CHECKPOINT_DIR).exists():
        path = latest_checkpoint(path) or path
    if not (path / "model.pt").exists() or not (path.parent.parent / "config.json").exists():
        raise ConfigError(
            f"{where}: expected a run directory with a finished checkpoint (runs/NAME) or one of its "
            "checkpoints (runs/NAME/checkpoints/step_0000060) with model.pt and the run's config.json"
        )
    return path


def load_checkpoint_policy(
    checkpoint: Path, device: torch.device, flag: str = "--checkpoint"
) -> tuple[torch.nn.Module, Any, str]:
    """(policy with the checkpoint's weights, tokenizer, "base@step_N") from a checkpoint of a gtpo run. A
    damaged model.pt is named, with the newest intact checkpoint to give ``flag`` instead."""
    model_cfg = from_dict(json.loads((checkpoint.parent.parent / "config.json").read_text())).model
    weights = read_file(checkpoint / "model.pt", partial(torch.load, map_location=device, weights_only=True), flag)
    model, tokenizer = components.build_policy(model_cfg, device)
    model.load_state_dict(weights)
    return model.eval(), tokenizer, f"{model_cfg.name_or_path}@{checkpoint.name}"


def export_checkpoint(source: str | Path, out: str | Path | None = None, lora: LoraExport = "merged") -> Path:
    """``gtpo export``: a run directory or checkpoint -> an HF folder (default: RUN/model, or
    RUN/model-step_N for an older checkpoint)."""
    checkpoint = resolve_checkpoint(source)
    run_dir = checkpoint.parent.parent
    if out is None:
        newest = latest_checkpoint(run_dir)
        out = run_dir / (MODEL_DIR if newest == checkpoint else f"{MODEL_DIR}-{checkpoint.name}")
    model, tokenizer, _ = load_checkpoint_policy(checkpoint, torch.device("cpu"), flag="gtpo export")
    settings = json.loads((run_dir / "config.json").read_text())
    data = from_dict(settings).data
    written = save_model_folder(
        model, tokenizer, out, lora=lora, system_prompt=sources.system_prompt(data), run_config=settings
    )
    assert written is not None
    return written
