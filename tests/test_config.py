from pathlib import Path

import pytest

from edgefpn.config import Config, config_hash, load_config
from edgefpn.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.epochs=3", "model.input_size=[256, 256]", "check.max_map_drop.int8=0.3"])
    assert cfg.train.epochs == 3
    assert cfg.model.input_size == (256, 256)
    assert cfg.check.max_map_drop["int8"] == 0.3
    assert cfg.check.max_map_drop["fp32"] == 0.05  # the rest of the table is kept
    assert load_config().train.epochs == Config().train.epochs


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.train.epochs = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.check.max_map_drop["fp32"] = 1.0  # type: ignore[index]


def test_unknown_key_suggests_nearest(tmp_path):
    p = write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(
        ConfigError, match=r"cfg.yaml: unknown key train.epoch \(did you mean train.epochs\?\)"
    ):
        load_config(p)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("train:\n  epochs: three\n", "train.epochs must be an integer"),
        ("model:\n  input_size: [300, 320]\n", "model.input_size must be positive multiples of 32"),
        ("train: [1, 2]\n", "train must be a mapping"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("train:\n  epochs: 3\n bad indent\n", "invalid YAML"),
        ("a: &x [1]\nb: *x\n", "aliases are not allowed"),
        ("check:\n  max_map_drop: {fp64: 1.0}\n", "unknown precisions"),
    ],
)
def test_invalid_configs_name_file_and_problem(tmp_path, text, pattern):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(p)
    assert str(info.value).startswith(str(p))


def test_missing_and_oversized_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    big = write(tmp_path, "# " + "x" * (2 << 20))
    with pytest.raises(ConfigError, match="byte cap"):
        load_config(big)


def test_bad_override():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(None, ["train.epochs"])


def test_config_hash_tracks_section_content():
    a, b = load_config(), load_config(None, ["train.lr=0.5"])
    assert config_hash(a.model) == config_hash(b.model)
    assert config_hash(a.train) != config_hash(b.train)


def test_default_yaml_loads():
    cfg = load_config(Path(__file__).parents[1] / "configs" / "default.yaml")
    assert cfg.model.arch == "fcos"


def test_variant_applies_to_faster_rcnn_only() -> None:
    # retinanet + variant v2 used to build RetinaNet v1 silently (v2 is the arch retinanet_v2)
    with pytest.raises(ConfigError, match="model.variant.*faster_rcnn only"):
        load_config(None, ["model.arch=retinanet", "model.variant=v2"])
    assert load_config(None, ["model.arch=faster_rcnn", "model.variant=v2"]).model.variant == "v2"


def test_config_knows_its_source_but_it_is_not_a_setting(tmp_path) -> None:
    from edgefpn.config import dump_yaml, to_dict

    p = write(tmp_path, "train:\n  epochs: 3\n")
    assert load_config(p).source == str(p)
    assert load_config(p, ["train.lr=0.5"]).source == f"{p} + --set"
    assert load_config().source == "<defaults>"
    assert "source" not in to_dict(load_config(p)) and "source" not in dump_yaml(load_config(p))
    assert load_config(p) == load_config(None, ["train.epochs=3"])  # where from does not change equality
    with pytest.raises(ConfigError, match="unknown key source"):
        load_config(write(tmp_path, "source: elsewhere.yaml\n"))
