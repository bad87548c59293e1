"""Run configuration: dataclasses whose field docs are the ``--help``; YAML file + Megatron flags.

Precedence: field default < ``--config FILE.yaml`` < command-line flag. YAML keys are the flag
names in snake_case (``num_layers``, ``bf16``), flat or grouped in sections (``model:``,
``train:`` ...). An unknown key or flag, or an impossible combination, is an error naming it.

- sections.py: the dataclasses (``Config`` and its sections), ``ARCH_FIELDS``, ``ConfigError``;
- flags.py: ``parse_config`` (argparse + YAML), ``read_yaml``, ``load_yaml``;
- checks.py: ``finalize`` (derived defaults, impossible combinations refused).
"""
from megatron_th.config.checks import data_parallel_size, finalize
from megatron_th.config.flags import ESTIMATE_SECTION, build_parser, load_yaml, parse_config, read_yaml
from megatron_th.config.sections import (ARCH_FIELDS, SECTIONS, Config, ConfigError, DataConfig, ModelConfig,
                                         OptimConfig, ParallelConfig, TrainConfig)

__all__ = ["ARCH_FIELDS", "ESTIMATE_SECTION", "SECTIONS", "Config", "ConfigError", "DataConfig", "ModelConfig",
           "OptimConfig", "ParallelConfig", "TrainConfig", "build_parser", "data_parallel_size", "finalize",
           "load_yaml", "parse_config", "read_yaml"]
