"""The cleaning settings: ``thai.yaml`` beside this file, optionally overlaid by the user's YAML.

``load_config(path)`` returns ``{section: {key: value}}`` with every key of the default file
present. The user's file replaces whole values key by key (a dict-valued key such as
``top_n_grams`` is replaced, not merged); a section it leaves out keeps the defaults. Checked here,
so that a bad file stops the run before anything is written, with one ``ConfigError`` naming
``file:line``: unknown sections or keys (keys of the datatrove sections are the keyword arguments
of the datatrove filter they configure), wrong types, n-gram tables that are not ``{n: fraction}``,
regular expressions that do not compile, out-of-range choices.
"""
from __future__ import annotations

import inspect
import os
import re

import yaml

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "thai.yaml")

# sections configuring a datatrove filter: their keys are that filter's keyword arguments
_DATATROVE = {
    "thai_gopher_repetition": "GopherRepetitionFilter", "english_gopher_repetition": "GopherRepetitionFilter",
    "thai_fineweb_quality": "FineWebQualityFilter", "english_fineweb_quality": "FineWebQualityFilter",
    "thai_gopher_quality": "GopherQualityFilter", "english_gopher_quality": "GopherQualityFilter",
}
_NGRAM_KEYS = ("top_n_grams", "dup_n_grams")
_CHOICES = {("minhash", "shingle"): ("char", "word"), ("minhash", "hash_fc"): ("sha1", "xxhash"),
            ("minhash", "precision"): (32, 64)}
_FRACTIONS = {("language_routing", "th_min_share"), ("language_routing", "en_min_share"),
              ("minhash", "min_estimated_jaccard")}
_POSITIVE = {("boilerplate", "min_docs"), ("boilerplate", "max_line_chars"), ("minhash", "n_grams"),
             ("minhash", "num_buckets"), ("minhash", "hashes_per_bucket"), ("minhash", "workers_per_bucket")}


class ConfigError(ValueError):
    """A config file that cannot be used; the message starts with ``file:line:``."""


def _filter_params(section: str) -> dict:
    from datatrove.pipeline import filters

    sig = inspect.signature(getattr(filters, _DATATROVE[section]).__init__)
    return {k: p.default for k, p in sig.parameters.items() if k not in ("self", "exclusion_writer", "language")}


def _key_lines(text: str) -> dict:
    """{(section,) or (section, key): 1-based line} of a YAML mapping, for error messages."""
    out = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return out
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            out[(k.value,)] = k.start_mark.line + 1
            if isinstance(v, yaml.MappingNode):
                for k2, _ in v.value:
                    out[(k.value, k2.value)] = k2.start_mark.line + 1
    return out


def _read(path: str) -> tuple[dict, dict]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping of sections, not {type(data).__name__}")
    return data, _key_lines(text)


def _ngrams(value, where: str, key: str) -> tuple:
    items = value.items() if isinstance(value, dict) else value
    try:
        out = tuple(sorted((int(n), float(f)) for n, f in items))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must map n to a fraction, e.g. {{2: 0.2, 3: 0.18}}") from None
    if any(n < 1 or not 0 <= f <= 1 for n, f in out):
        raise ConfigError(f"{where}: {key} needs n >= 1 and fractions in [0, 1]")
    return out


def _check_value(section: str, key: str, value, default, where: str):
    if key in _NGRAM_KEYS:
        return _ngrams(value, where, key)
    if (section, key) in _CHOICES:
        if value not in _CHOICES[(section, key)]:
            choices = list(_CHOICES[(section, key)])
            raise ConfigError(f"{where}: {section}.{key} must be one of {choices}, got {value!r}")
        return value
    if key == "patterns" or key == "stop_words":
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise ConfigError(f"{where}: {section}.{key} must be a list of strings")
        if key == "patterns":
            for p in value:
                try:
                    re.compile(p)
                except re.error as e:
                    raise ConfigError(f"{where}: {section}.patterns: {p!r} is not a regular expression ({e})") from None
        return list(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {section}.{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)) or default is None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}: {section}.{key} must be a number, got {value!r}")
        if value is not None and value < 0:
            raise ConfigError(f"{where}: {section}.{key} must not be negative, got {value!r}")
        if (section, key) in _FRACTIONS and (value is None or value > 1):
            raise ConfigError(f"{where}: {section}.{key} must be a fraction in [0, 1], got {value!r}")
        if (section, key) in _POSITIVE and (value is None or value < 1 or int(value) != value):
            raise ConfigError(f"{where}: {section}.{key} must be a whole number >= 1, got {value!r}")
        return value
    return value


def load_config(path: str | None = None) -> dict:
    """The validated settings: the defaults overlaid by ``path`` (None: the defaults alone).
    Raises ConfigError."""
    base, _ = _read(DEFAULT_CONFIG)
    user, lines = _read(path) if path else ({}, {})
    out = {}
    for section, defaults in base.items():
        allowed = dict(defaults or {})
        if section in _DATATROVE:
            allowed = {**_filter_params(section), **allowed}
        out[section] = dict(defaults or {})
        if section not in user:
            continue
        given = user[section]
        where = f"{path}:{lines.get((section,), 1)}"
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise ConfigError(f"{where}: section {section} must be a mapping")
        for key, value in given.items():
            kwhere = f"{path}:{lines.get((section, key), lines.get((section,), 1))}"
            if key not in allowed:
                raise ConfigError(f"{kwhere}: unknown key {section}.{key} (known: {', '.join(sorted(allowed))})")
            out[section][key] = value
    for section in user:
        if section not in base:
            raise ConfigError(f"{path}:{lines.get((section,), 1)}: unknown section {section!r} "
                              f"(known: {', '.join(base)})")
    for section, values in out.items():
        allowed = _filter_params(section) if section in _DATATROVE else {}
        for key, value in values.items():
            src = path if section in user and key in (user[section] or {}) else DEFAULT_CONFIG
            where = f"{src}:{lines.get((section, key), 1)}" if src == path else src
            values[key] = _check_value(section, key, value, base[section].get(key, allowed.get(key)), where)
    return out
