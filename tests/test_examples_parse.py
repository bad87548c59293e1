"""Every examples/*.yaml is a valid run: pretrain_gpt.py's parser (megatron_th/config/
parse_config: an unknown key is an error) and finalize (derived defaults, impossible combinations)
accept it at its world size (its ``estimate:`` section's ``gpus``, else TP x PP), and
tools/estimate.py reads its ``estimate:`` section (megatron_th/cli/estimate.py settings). Nothing
touches data or builds a model. A key misspelled in any section of any example is refused by name.
"""
import dataclasses
import glob
import os

import pytest
import yaml

from megatron_th.cli.estimate import SETTINGS, settings
from megatron_th.config import ESTIMATE_SECTION, SECTIONS, ConfigError, finalize, parse_config, read_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml")))


def _read(path):
    cfg, ns = parse_config(["--config", path])
    opts = settings(["--config", path], ns)
    p = cfg.parallel
    return finalize(cfg, opts["gpus"] or p.tensor_model_parallel_size * p.pipeline_model_parallel_size)


def test_examples_exist():
    names = {os.path.basename(p) for p in EXAMPLES}
    assert {"tiny.yaml", "llama_7b_4xa100.yaml", "cpt_qwen2.5_7b_thai.yaml", "cpt_llama3.1_8b_thai.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_parses_and_finalizes(path, tmp_path):
    _read(path)
    # the same file with one key misspelled (its last letter doubled), in each section in turn, is refused
    raw = read_yaml(path)
    known = {f.name for k in SECTIONS.values() for f in dataclasses.fields(k)} | set(SETTINGS) | {"vocab_size"}
    for section, values in raw.items():
        if not isinstance(values, dict) or not values:
            continue
        key = next(iter(values))
        typo = key + key[-1]
        assert typo not in known
        edited = {s: ({(typo if k == key else k): v for k, v in vals.items()} if s == section else vals)
                  for s, vals in raw.items()}
        bad = tmp_path / f"{section}.yaml"
        bad.write_text(yaml.safe_dump(edited), encoding="utf-8")
        with pytest.raises(ConfigError, match=f"unknown key '{typo}'"):
            _read(str(bad))
    assert ESTIMATE_SECTION not in raw or isinstance(raw[ESTIMATE_SECTION], dict)
