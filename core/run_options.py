"""The RunConfig of `skd sft` / `skd distill` from layered values, and --config files.

Public: ConfigFile, read_config_file(path, *, allowed, cast), sft_run_config(explicit, config_file),
distill_run_config(explicit, config_file), sft_recipe(model, task, *, length_given), SFT_MODEL.

Layers, lowest first: the config dataclasses' defaults, the preset model's recipe (sft), the --config
file, the options given on the command line; what the command fixes (sft: the method, no teacher)
cannot be set. Values are keyed by their flat names (skd.core.config.FLAT_KEYS). A value from the
file that fails a range check is reported with the file and the key it came from.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping

from skd.core.config import FLAT_KEYS, SECTIONS, ConfigValueError, RunConfig, TrainConfig
from skd.core.errors import SkdError
from skd.core.overrides import with_overrides

SFT_MODEL = "tiny-teacher"  # what `skd sft` fine-tunes when no --model is given


@dataclass(frozen=True)
class ConfigFile:
    """The settings read from one --config file: flat name -> value, and the key each was written as."""

    path: str
    values: Mapping[str, Any] = field(default_factory=dict)
    keys: Mapping[str, str] = field(default_factory=dict)


def _load_mapping(path: str) -> dict:
    try:
        text = open(path).read()
    except OSError as e:
        raise SkdError(f"cannot read {path} ({e.strerror})", "check the --config path") from e
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:
        raise SkdError(f"cannot parse {path}: {str(e).splitlines()[0]}", "fix the YAML/JSON syntax") from e
    if not isinstance(data, dict):
        raise SkdError(f"{path} must hold a mapping of option names to values", "see skd distill --help")
    return data


def _section_name(section: str, key: str, allowed: Collection[str]) -> str | None:
    """The flat name a key of a section stands for: a field name (max_steps) or an option name."""
    norm = key.replace("-", "_")
    names = [n for n, (sec, f) in FLAT_KEYS.items() if sec == section and norm in (f, n)]
    return next((n for n in names if n in allowed), None)


def read_config_file(path: str, *, allowed: Collection[str], cast: Callable[[str, Any], Any]) -> ConfigFile:
    """Read a YAML/JSON file of settings, flat (option names) or in sections model/data/train/sample.

    Every key must name one of the `allowed` settings; `cast(name, value)` converts a value exactly as
    the command-line option of that name would (ValueError: not a value it accepts).
    """
    values: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for key, value in _load_mapping(path).items():
        key = str(key)
        if key in SECTIONS and isinstance(value, dict):
            entries = [(f"{key}.{sub}", _section_name(key, str(sub), allowed), v) for sub, v in value.items()]
        else:
            name = key.replace("-", "_")
            entries = [(key, name if name in allowed and name in FLAT_KEYS else None, value)]
        for written, name, v in entries:
            if name is None:
                raise SkdError(f"unknown key {written!r} in {path}",
                               "use this command's option names (e.g. max-steps) or sections model/data/train/sample "
                               "holding their fields")
            option = "--" + name.replace("_", "-")
            if name in values:
                raise SkdError(f"{path}: keys {keys[name]!r} and {written!r} both set {option}", "keep one of them")
            if v is None:
                raise SkdError(f"{path}: key {written!r} has no value", f"give it a value {option} accepts, or drop it")
            try:
                values[name] = cast(name, v)
            except ValueError as e:
                raise SkdError(f"{path}, key {written!r}: {e}", f"give it a value {option} accepts") from e
            keys[name] = written
    return ConfigFile(path, values, keys)


def _names_of(section: str, field_name: str) -> list[str]:
    return [n for n, (sec, f) in FLAT_KEYS.items() if (sec, f) == (section, field_name)]


def _build(preset: Mapping[str, Any], file: ConfigFile | None, explicit: Mapping[str, Any]) -> RunConfig:
    """Defaults < preset < file < explicit (None there: not given), one section at a time."""
    file_values = dict(file.values) if file is not None else {}
    layers = {sec: ({}, {}) for sec in SECTIONS}
    for idx, values in ((0, preset), (0, file_values), (1, explicit)):
        for name, value in values.items():
            sec, f = FLAT_KEYS[name]
            layers[sec][idx][f] = value

    def make(sec: str, base):
        try:
            return with_overrides(base(), *layers[sec])
        except ConfigValueError as e:
            culprits = [file.keys[n] for f in e.fields for n in _names_of(sec, f)
                        if n in file_values and explicit.get(n) is None]
            if culprits:
                raise SkdError(f"{file.path}, key {culprits[0]!r}: {e.problem}", e.fix) from e
            raise

    model, data, sample = (make(sec, SECTIONS[sec]) for sec in ("model", "data", "sample"))
    train_pre, train_exp = layers["train"]
    method = train_exp.get("method") or train_pre.get("method") or TrainConfig.method
    if train_exp.get("output_dir") is None and "output_dir" not in train_pre:
        train_pre["output_dir"] = f"runs/{method}-{data.task}"
    # The base carries the final method, so the divergence it leaves unset is that method's own.
    train = make("train", lambda: TrainConfig(method=method))
    return RunConfig(model=model, data=data, train=train, sample=sample)


def sft_recipe(model: str, task: str, *, length_given: bool) -> dict[str, Any]:
    """The preset model's own SFT settings on the built-in arith tasks ({} for other models / tasks).

    Without it a model trained from scratch would get the paper's settings for pre-trained models;
    when the run's length is asked for (epochs given), the recipe's step count is dropped.
    """
    from skd.core.presets import PRESET_SFT_RECIPES

    recipe = dict(PRESET_SFT_RECIPES.get(model, {})) if task.startswith("arith") else {}
    if recipe and length_given:
        recipe.pop("max_steps", None)
    return recipe


def sft_run_config(explicit: Mapping[str, Any], config_file: ConfigFile | None = None) -> RunConfig:
    """The RunConfig of `skd sft`: cross-entropy fine-tuning of one model, with its preset recipe."""
    given = {**(config_file.values if config_file else {}), **{k: v for k, v in explicit.items() if v is not None}}
    model = given.get("model", SFT_MODEL)
    recipe = sft_recipe(model, given.get("task", SECTIONS["data"].task), length_given="epochs" in given)
    return _build({"model": SFT_MODEL, **recipe, "method": "sft", "teacher": None}, config_file, explicit)


def distill_run_config(explicit: Mapping[str, Any], config_file: ConfigFile | None = None) -> RunConfig:
    """The RunConfig of `skd distill`: defaults < config file < explicit options."""
    return _build({}, config_file, explicit)
