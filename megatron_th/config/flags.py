"""Flags and YAML into a ``Config``: ``--config FILE.yaml`` (flat or sectioned keys, the flag names
in snake_case), then Megatron-style command-line flags, each generated from a section field."""
import argparse
import dataclasses
import typing

from megatron_th.cli.parser import ArgumentParser
from megatron_th.config.sections import SECTIONS, Config, ConfigError, _owner


def _base_type(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) is typing.Union else tp


def build_parser(extra=None) -> argparse.ArgumentParser:
    p = ArgumentParser(prog="pretrain_gpt.py", argument_default=argparse.SUPPRESS,
                       description="Megatron-style GPT pretraining (flags override --config).")
    p.add_argument("--config", help="YAML file; keys are these flags in snake_case, flat or in sections.")
    for sec, klass in SECTIONS.items():
        g = p.add_argument_group(sec)
        for f in dataclasses.fields(klass):
            flag = "--" + f.name.replace("_", "-")
            tp = _base_type(f.type)
            doc = f.metadata["doc"].replace("%", "%%")
            if tp is bool:
                g.add_argument(flag, action=argparse.BooleanOptionalAction, help=doc)
            elif f.metadata.get("nargs"):
                g.add_argument(flag, nargs=f.metadata["nargs"], help=doc)
            else:
                g.add_argument(flag, type=tp if tp in (int, float) else str, help=doc,
                               choices=f.metadata.get("choices"))
    if extra:
        extra(p)
    return p


def _coerce(name, f, value, where):
    tp = _base_type(f.type)
    if value is None:
        return None
    try:
        if tp is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if tp is float:
            return float(value)
        if tp is list:
            return [str(x) for x in value] if isinstance(value, list) else str(value).split()
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name} must be {tp.__name__}, got {value!r}") from None


# A YAML section that training ignores: settings of tools/estimate.py (GPUs, GPU type, vocabulary
# size, tokens, price), so one file describes both the run and its plan.
ESTIMATE_SECTION = "estimate"


def read_yaml(path: str) -> dict:
    """The YAML file as written (sections kept)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: invalid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: expected a mapping of keys to values")
    return raw


def load_yaml(path: str) -> dict:
    """Config keys of the YAML file, flattened over sections (the estimate section left out)."""
    flat = {}
    for k, v in read_yaml(path).items():
        if k == ESTIMATE_SECTION and isinstance(v, dict):
            continue
        if k in SECTIONS and isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    return flat


def parse_config(argv=None, extra=None):
    """Returns (Config, extra argparse namespace). Exits with one line on a bad flag or value."""
    parser = build_parser(extra)
    ns = vars(parser.parse_args(argv))
    owner = _owner()
    cfg = Config()
    values = {}
    if "config" in ns:
        for k, v in load_yaml(ns["config"]).items():
            if k.replace("-", "_") not in owner:
                raise ConfigError(f"--config {ns['config']}: unknown key {k!r}")
            values[k.replace("-", "_")] = (v, f"--config {ns['config']}")
    rest = {}
    for k, v in ns.items():
        if k in owner:
            values[k] = (v, "--" + k.replace("_", "-"))
        elif k != "config":
            rest[k] = v
    for k, (v, where) in values.items():
        sec, f = owner[k]
        v = _coerce(k, f, v, where)
        if f.metadata.get("choices") and v is not None and v not in f.metadata["choices"]:
            raise ConfigError(f"{where}: {k} must be one of {f.metadata['choices']}, got {v!r}")
        setattr(getattr(cfg, sec), k, v)
    return cfg, argparse.Namespace(**rest)
