"""gin parsing in-process: mistakes fail before any work with one-line messages naming the closest known name, and
the shipped gin files resolve from any working directory and through --gin_search_paths."""

from pathlib import Path
import re

import gin
import pytest

from synpro_jax import configs
from synpro_jax.configs import GinConfigError

REPO = Path(__file__).resolve().parents[1]
DEFAULT = "gin/experiments/markov_tiny.gin"


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Every test runs from a directory with no gin/ folder, as a new user would."""
    monkeypatch.chdir(tmp_path)
    yield
    gin.clear_config()


def test_a_mistyped_macro_fails_naming_the_closest():
    with pytest.raises(GinConfigError) as e:
        configs.parse([DEFAULT], ["LEARNING_RAT=1e-3"])
    msg = str(e.value)
    assert "--gin.LEARNING_RAT=1e-3" in msg and "did you mean LEARNING_RATE" in msg and "\n" not in msg


def test_a_new_macro_that_a_binding_reads_is_fine():
    configs.parse([DEFAULT], ["MY_SEED=7", "synpro.TrainerConfig.seed=%MY_SEED", "NUM_STEPS=3"])
    assert gin.get_bindings("synpro.TrainerConfig")["seed"] == 7
    assert gin.get_bindings("synpro.TrainerConfig")["num_steps"] == 3


def test_an_unknown_preset_field_fails_at_parse_time():
    with pytest.raises(GinConfigError) as e:
        configs.parse([DEFAULT], ["synpro.preset.d_modle=32"])
    assert "synpro.preset has no parameter 'd_modle'; did you mean d_model" in str(e.value)
    with pytest.raises(GinConfigError, match="synpro.preset has no parameter 'bogus'; its parameters: name, "):
        configs.parse([DEFAULT], ["synpro.preset.bogus=3"])


def test_preset_rejects_an_unknown_field_with_a_value_error():
    with pytest.raises(ValueError, match="ModelConfig has no field 'bogus'"):
        configs.preset(name="tiny", bogus=3)
    assert configs.preset(name="tiny", d_model=32).d_model == 32


def test_unknown_parameters_and_configurables_name_the_closest():
    with pytest.raises(GinConfigError, match="TrainerConfig has no parameter 'eval_evry'; did you mean eval_every"):
        configs.parse([DEFAULT], ["synpro.TrainerConfig.eval_evry=5"])
    with pytest.raises(GinConfigError, match="no configurable synpro.TrainerConfg; did you mean synpro.TrainerConfig"):
        configs.parse([DEFAULT], ["synpro.TrainerConfg.eval_every=5"])


def test_a_mistake_inside_a_file_names_the_file_and_line(tmp_path):
    exp = tmp_path / "exp.gin"
    exp.write_text(f"include '{DEFAULT}'\n\nsynpro.TrainerConfig.log_evry = 5\n")
    with pytest.raises(GinConfigError, match=re.escape(f"{exp}:3: synpro.TrainerConfig has no parameter")):
        configs.parse([str(exp)], [])


def test_required_macros_are_listed():
    with pytest.raises(GinConfigError) as e:
        configs.parse(["gin/runs/pretrain.gin"], [])
    assert "REQUIRED" in str(e.value) and "OUT_DIR" in str(e.value) and "NUM_STEPS" in str(e.value)


def test_shipped_files_and_includes_resolve_from_any_directory():
    assert not Path("gin").exists()
    configs.parse([DEFAULT], [])
    assert configs.find_gin_file(DEFAULT, configs.search_paths()).is_file()
    assert gin.get_bindings("synpro.preset")["name"] == "tiny"  # from the included gin/models/tiny.gin


def test_gin_search_paths_as_in_t5x(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    (conf / "mine").mkdir(parents=True)
    (conf / "mine" / "base.gin").write_text("NUM_STEPS = 11\n")
    (conf / "exp.gin").write_text(f"include '{DEFAULT}'\ninclude 'mine/base.gin'\n")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    configs.parse(["exp.gin"], [], gin_search_paths=[str(conf)])
    assert gin.get_bindings("synpro.TrainerConfig")["num_steps"] == 11
    with pytest.raises(GinConfigError, match="'exp.gin' not found .* --gin_search_paths"):
        configs.parse(["exp.gin"], [])


def test_no_gin_private_state_is_read():
    """gin's private module state (gin.config._CONFIG and friends) is no API; the checks parse the text."""
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "synpro_jax").rglob("*.py")
        if re.search(r"gin\.config\._[A-Za-z]", p.read_text())
    ]
    assert offenders == []


def test_grpo_config_is_a_gin_configurable():
    configs.parse([], ["synpro.GRPOConfig.beta = 0.01"])
    assert gin.query_parameter("synpro.GRPOConfig.beta") == 0.01
    with pytest.raises(GinConfigError, match="did you mean beta"):
        configs.parse([], ["synpro.GRPOConfig.betta = 0.01"])
