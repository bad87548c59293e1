"""megatron_th: Megatron-style 3D-parallel GPT pretraining that runs on CPU too."""

__version__ = "0.1.0"
