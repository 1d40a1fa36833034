from pathlib import Path

import pytest

from rqf.config import apply_overrides, load_yaml
from rqf.errors import ConfigError
from rqf.params import Param, validate_params
from rqf.pipeline import resolve_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


PIPELINE = """
name: t
output_dir: out
storage: {type: h5_recsys, items: data/item_data.h5}
dataset: {type: items}
splitter: {type: index}
model: {type: rqvae, codebook_size: 16}
train: {epochs: 2, lr: 1e-3}
"""


def test_wrong_type_names_the_key_path():
    params = (Param("codebook_size", int, 256),)
    with pytest.raises(ConfigError, match=r"model.codebook_size: expected int, got 'abc'"):
        validate_params(params, {"codebook_size": "abc"}, "model")


def test_bool_is_not_an_int_and_int_float_coerce():
    params = (Param("n", int, 1), Param("x", float, 1.0))
    with pytest.raises(ConfigError, match="expected int, got True"):
        validate_params(params, {"n": True}, "s")
    assert validate_params(params, {"n": 4.0, "x": 3}, "s") == {"n": 4, "x": 3.0}


def test_yaml_1_1_exponent_string_is_accepted_for_floats(tmp_path):
    cfg = resolve_config(write(tmp_path, PIPELINE))
    assert cfg["train"]["lr"] == pytest.approx(1e-3)


def test_unknown_key_suggests_the_close_one(tmp_path):
    path = write(tmp_path, PIPELINE.replace("codebook_size: 16", "codebok_size: 16"))
    with pytest.raises(ConfigError, match=r"model.codebok_size: unknown key; did you mean 'codebook_size'"):
        resolve_config(path)


def test_unknown_component_lists_available_and_closest(tmp_path):
    path = write(tmp_path, PIPELINE.replace("{type: index}", "{type: leave_lst_out}"))
    with pytest.raises(ConfigError) as err:
        resolve_config(path)
    message = str(err.value)
    assert "unknown splitter 'leave_lst_out'; did you mean 'leave_last_out'?" in message
    assert "index" in message and "temporal" in message


def test_missing_required_value(tmp_path):
    path = write(tmp_path, PIPELINE.replace("type: h5_recsys, items: data/item_data.h5",
                                            "type: h5_recsys"))
    with pytest.raises(ConfigError, match=r"storage.items: missing required value"):
        resolve_config(path)


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"modle: unknown top-level key; did you mean 'model'"):
        resolve_config(write(tmp_path, PIPELINE + "modle: {}\n"))


def test_relative_paths_resolve_against_the_pipeline_folder(tmp_path):
    cfg = resolve_config(write(tmp_path, PIPELINE))
    assert cfg["storage"]["items"] == str(tmp_path / "data/item_data.h5")
    assert cfg["output_dir"] == str(tmp_path / "out")


def test_set_paths_resolve_against_the_working_directory_in_run_and_encode(tmp_path,
                                                                          monkeypatch):
    from rqf.pipeline import _reopen
    from rqf.plugins import get_plugins

    (tmp_path / "pipes").mkdir()
    (tmp_path / "work").mkdir()
    pipeline = tmp_path / "pipes" / "p.yaml"
    pipeline.write_text(PIPELINE)
    monkeypatch.chdir(tmp_path / "work")
    sets = ["storage.items=new/items.h5", "output_dir=runs/x", "model.codebook_size=8"]
    cfg = resolve_config(pipeline, sets)
    assert cfg["storage"]["items"] == str(tmp_path / "work/new/items.h5")  # the shell's cwd
    assert cfg["output_dir"] == str(tmp_path / "work/runs/x")
    assert cfg["model"]["codebook_size"] == 8
    assert resolve_config(pipeline)["storage"]["items"] == str(tmp_path / "pipes/data/item_data.h5")
    run = tmp_path / "run"  # a finished run's saved config, reopened by rqf encode
    run.mkdir()
    (run / "config.yaml").write_text(resolve_config(pipeline).to_yaml())
    reopened, _ = _reopen(run, get_plugins(), ["storage.items=new/items.h5"])
    assert reopened["storage"]["items"] == str(tmp_path / "work/new/items.h5")


def test_overrides_are_typed_by_yaml_and_repeatable(tmp_path):
    cfg = resolve_config(write(tmp_path, PIPELINE), ["model.levels=4", "model.hidden_dims=[64, 32]",
                                                     "train.precision=bf16", "model.levels=5"])
    assert cfg["model"]["levels"] == 5
    assert cfg["model"]["hidden_dims"] == [64, 32]
    assert cfg["train"]["precision"] == "bf16"


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["model.levels"])


def test_duplicate_keys_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"line 3: duplicate key 'seed'"):
        load_yaml(write(tmp_path, "name: a\nseed: 1\nseed: 2\n"))


def test_a_list_is_not_a_pipeline(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping of sections, but the file is a list"):
        load_yaml(write(tmp_path, "- a\n- b\n"))


def test_unreadable_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid YAML at line 2"):
        load_yaml(write(tmp_path, "name: a\nmodel: {type: x]\nseed: 1\n"))


def test_missing_pipeline_file(tmp_path):
    with pytest.raises(ConfigError, match="pipeline file not found"):
        load_yaml(tmp_path / "nope.yaml")


def test_choices_are_enforced(tmp_path):
    with pytest.raises(ConfigError, match=r"train.precision: expected one of 'fp32', 'bf16', 'fp16', got 'fp8'"):
        resolve_config(write(tmp_path, PIPELINE), ["train.precision=fp8"])
