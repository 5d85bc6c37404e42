"""Config: presets load, unknown and invalid fields fail with a message naming the field."""

import pytest

from gtpo.config import ConfigError, TrainConfig, from_dict, load_preset, to_dict, validate


def test_defaults_are_valid_and_roundtrip():
    config = validate(TrainConfig())
    assert from_dict(to_dict(config)) == config


def test_overlay_changes_only_named_fields():
    config = from_dict({"algo": {"gamma": 1.0}, "steps": 3})
    assert config.algo.gamma == 1.0 and config.steps == 3
    assert config.algo.shaping is TrainConfig().algo.shaping


def test_unknown_field_names_the_field():
    with pytest.raises(ConfigError, match=r"algo\.gama"):
        from_dict({"algo": {"gama": 0.5}})


def test_invalid_value_names_field_and_fix():
    with pytest.raises(ConfigError, match=r"rollout\.group_size.*>= 2"):
        validate(from_dict({"rollout": {"group_size": 1}}))
    with pytest.raises(ConfigError, match=r"algo\.invalid_statuses"):
        validate(from_dict({"algo": {"invalid_statuses": ["oops"]}}))


@pytest.mark.parametrize("name", ["qwen2.5-math-1.5b", "qwen2.5-math-7b"])
def test_shipped_presets_load_and_validate(name):
    config = validate(load_preset(name))
    assert config.rollout.group_size == 16
    assert config.optim.lr == pytest.approx(1e-6)
    assert (config.algo.clip_low, config.algo.clip_high) == (0.2, 0.28)


def test_missing_preset_lists_shipped_ones():
    with pytest.raises(ConfigError, match=r"qwen2\.5-math-1\.5b"):
        load_preset("no-such-preset")


def test_a_folder_named_like_a_shipped_preset_does_not_shadow_it(tmp_path, monkeypatch):
    """A comparison's output folder ``multistep/`` in the working directory once broke ``--preset multistep``."""
    (tmp_path / "qwen2.5-math-1.5b").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_preset("qwen2.5-math-1.5b").rollout.group_size == 16
    with pytest.raises(ConfigError, match=r"no such file or shipped preset"):
        load_preset(str(tmp_path))


def test_settings_under_their_former_names_are_read_and_retired_ones_refused():
    from gtpo.config import renamed_flags

    old = {"rollout": {"group_size": 4, "filter_groups": True, "overlong": "mask", "eval_temperature": 0.0}}
    config = from_dict({**old, "optim": {"micro_batch_size": 0}})  # a run folder saved before the split
    assert (config.rollout.group_size, config.filter.groups, config.overlong.mode) == (4, True, "mask")
    assert config.eval.temperature == 0.0
    with pytest.raises(ConfigError, match=r"optim\.micro_batch_size' was retired: optim\.micro_batch_tokens"):
        from_dict({"optim": {"micro_batch_size": 2}})
    argv, notes = renamed_flags(["--rollout.filter-groups", "--rollout.sandbox-workers=1", "--rollout.top-p", "1"])
    assert argv == ["--filter.groups", "--sandbox.workers=1", "--rollout.top-p", "1"]
    assert notes == ["note: --rollout.filter-groups is now --filter.groups",
                     "note: --rollout.sandbox-workers is now --sandbox.workers"]  # fmt: skip


def _two_values(hint):
    """Two different valid values of a setting's type."""
    import typing

    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)[:2]
    return {bool: (True, False), int: (3, 4), float: (0.25, 0.5), str: ("a", "b")}[hint]


def _renamed_pairs():
    from gtpo.config.files import RENAMED

    return sorted(RENAMED.items())


@pytest.mark.parametrize(("old", "new"), _renamed_pairs(), ids=[old for old, _ in _renamed_pairs()])
def test_a_current_name_wins_over_its_former_name_given_beside_it(old, new):
    """A config that gives both (a preset edited by hand, a saved config.json with a flag's value merged in) runs
    with the current name's value, whichever order the keys come in."""
    import typing

    (old_section, old_name), (new_section, new_name) = old.split("."), new.split(".")
    section_type = typing.get_type_hints(TrainConfig)[new_section]
    stale, current = _two_values(typing.get_type_hints(section_type)[new_name])
    for data in (
        {old_section: {old_name: stale}, new_section: {new_name: current}},
        {new_section: {new_name: current}, old_section: {old_name: stale}},
    ):
        assert getattr(getattr(from_dict(data), new_section), new_name) == current, data
    alone = from_dict({old_section: {old_name: stale}})  # the former name alone is still read
    assert getattr(getattr(alone, new_section), new_name) == stale


def test_a_preset_giving_both_names_runs_with_the_current_one(tmp_path):
    preset = tmp_path / "both.yaml"
    preset.write_text("rollout:\n  overlong: mask\n  group_size: 4\noverlong:\n  mode: penalty\n")
    config = load_preset(str(preset))
    assert (config.overlong.mode, config.rollout.group_size) == ("penalty", 4)
