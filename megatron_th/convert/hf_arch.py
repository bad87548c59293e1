"""The error every converter raises, and the one-call reading of an HF config.json.

The families and what each reads and writes are in ``megatron_th/convert/families`` (one module
per family, a registry keyed by config.json's ``model_type``). Anything that would convert only
approximately is refused with one line naming the key, never converted approximately.
"""
from __future__ import annotations


class ConversionError(ValueError):
    """A model, config or tokenizer that cannot be converted exactly."""


def model_fields_from_hf(c: dict, where: str = "config.json", log=print) -> tuple[str, dict]:
    """(model_type, {our ModelConfig field: value}) for an HF config dict; ConversionError if refused."""
    from megatron_th.convert import families

    model_type, _, fields = families.read_config(c, where, log)
    return model_type, fields
