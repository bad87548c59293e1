"""Run configuration: dataclasses whose field docs are the ``--help``; YAML file + Megatron flags.

Precedence: field default < ``--config FILE.yaml`` < command-line flag. YAML keys are the flag
names in snake_case (``num_layers``, ``bf16``), flat or grouped in sections (``model:``,
``train:`` ...). An unknown key or flag, or an impossible combination, is an error naming it.
"""
import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from typing import Optional

from megatron_th.cli.parser import ArgumentParser


def F(default, doc, **kw):
    """A config field with its documentation (shown by --help)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc, **kw})
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass
class ModelConfig:
    num_layers: int = F(2, "Transformer layers.")
    hidden_size: int = F(128, "Model width h.")
    num_attention_heads: int = F(4, "Query heads.")
    num_query_groups: Optional[int] = F(None, "Key/value heads (GQA; 1 = MQA). Default: = heads (MHA).")
    ffn_hidden_size: Optional[int] = F(None, "MLP width. Default 4h (GeLU) or the Llama rule 2/3*4h rounded to 64 (SwiGLU).")
    kv_channels: Optional[int] = F(None, "Head dim. Default hidden_size / num_attention_heads.")
    seq_length: int = F(256, "Tokens per training sample.")
    max_position_embeddings: Optional[int] = F(None, "Learned position table size. Default seq_length.")
    position_embedding_type: str = F("learned_absolute", "learned_absolute | rope.", choices=["learned_absolute", "rope"])
    rotary_base: int = F(10000, "RoPE theta (Llama-3 uses 500000).")
    use_rope_scaling: bool = F(False, "Scale RoPE frequencies for long contexts (Megatron's flag; the kind is "
                                      "--rope-scaling-type, Llama-3.1's llama3 by default).")
    rope_scaling_type: str = F("llama3", "llama3 | linear | dynamic: transformers' rope_type of the same name "
                                         "(modeling_rope_utils.py).", choices=["llama3", "linear", "dynamic"])
    rope_scaling_factor: float = F(8.0, "RoPE scaling factor (Llama-3.1: 8, Llama-3.2: 32).")
    rope_scaling_low_freq_factor: float = F(1.0, "llama3 scaling: low_freq_factor.")
    rope_scaling_high_freq_factor: float = F(4.0, "llama3 scaling: high_freq_factor.")
    rope_scaling_original_max_position_embeddings: Optional[int] = F(
        8192, "llama3 scaling: original_max_position_embeddings (the pretraining context).")
    rope_local_base_freq: Optional[float] = F(None, "RoPE theta of the sliding-window layers, unscaled (Gemma 3's "
                                                    "local layers); default: those layers use the global RoPE.")
    window_size: Optional[int] = F(None, "Sliding-window attention: a query sees itself and the window_size - 1 "
                                         "keys before it (transformers' sliding_window).")
    layer_types: Optional[list] = F(None, "Per layer: full_attention | sliding_attention (HF's layer_types). "
                                          "Default with --window-size: every layer slides.", nargs="+")
    qk_layernorm: bool = F(False, "Normalise queries and keys per head before RoPE (Qwen3, Gemma 3): one "
                                  "[head_dim] weight shared by all heads.")
    apply_layernorm_1p: bool = F(False, "Norms scale by (1 + weight), computed in fp32 (Gemma); weights start at 0.")
    sandwich_norm: bool = F(False, "Also normalise the attention and MLP outputs before the residual add "
                                   "(Gemma 2/3's post_attention_layernorm / post_feedforward_layernorm).")
    scale_embeddings: bool = F(False, "Multiply the input embeddings by sqrt(hidden_size) in the activation dtype "
                                      "(Gemma's normalizer).")
    query_pre_attn_scalar: Optional[float] = F(None, "Attention scores scale by query_pre_attn_scalar^-0.5 instead "
                                                     "of head_dim^-0.5 (Gemma 3).")
    vocab_size: Optional[int] = F(None, "Vocabulary rows with logits when larger than the tokenizer's (Qwen2.5 ships "
                                        "151936 rows for ~151.6k tokens). Default: the tokenizer's size.")
    normalization: str = F("LayerNorm", "LayerNorm | RMSNorm.", choices=["LayerNorm", "RMSNorm"])
    norm_epsilon: float = F(1e-5, "Epsilon of the norms.")
    swiglu: bool = F(False, "SwiGLU MLP (down(silu(gate(x)) * up(x))) instead of GeLU.")
    geglu: bool = F(False, "GeGLU MLP (down(gelu(gate(x)) * up(x)); tanh GeLU with --openai-gelu, as Gemma's "
                           "gelu_pytorch_tanh).")
    openai_gelu: bool = F(False, "tanh-approximate GeLU (GPT-2's gelu_new) instead of the exact erf GeLU.")
    disable_bias_linear: bool = F(False, "No biases in linear layers (Llama).")
    add_qkv_bias: bool = F(False, "Bias on the QKV projection even with --disable-bias-linear (Qwen2).")
    untie_embeddings_and_output_weights: bool = F(False, "Separate output head instead of the tied embedding.")
    make_vocab_size_divisible_by: int = F(128, "Pad the vocab to a multiple of this (never times TP).")
    hidden_dropout: float = F(0.1, "Dropout after attention and MLP.")
    attention_dropout: float = F(0.1, "Dropout on attention probabilities.")
    init_method_std: float = F(0.02, "Std of the normal initialisation; output layers scaled by 1/sqrt(2L).")
    attention_backend: str = F("auto", "auto | sdpa | varlen | dense | flex | flash | te.",
                               choices=["auto", "sdpa", "varlen", "dense", "flex", "flash", "te"])
    recompute_granularity: Optional[str] = F(None, "Activation recompute: full | selective.", choices=["full", "selective"])

    @property
    def gated_linear_unit(self) -> bool:
        """The MLP is gated ([gate; up] in linear_fc1): SwiGLU or GeGLU (Megatron's gated_linear_unit)."""
        return self.swiglu or self.geglu


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = F(1, "TP size (ranks that split every layer).")
    pipeline_model_parallel_size: int = F(1, "PP size (stages of layers).")
    num_layers_per_virtual_pipeline_stage: Optional[int] = F(None, "Layers per interleaved 1F1B chunk.")
    decoder_first_pipeline_num_layers: Optional[int] = F(None, "Layers on the first pipeline stage (default: even split).")
    decoder_last_pipeline_num_layers: Optional[int] = F(None, "Layers on the last pipeline stage (default: even split).")
    sequence_parallel: bool = F(False, "Split norms/dropout along the sequence inside a TP group.")
    use_distributed_optimizer: bool = F(False, "Zero-1: shard optimizer state and master weights over DP.")
    ddp_bucket_size: Optional[int] = F(None, "Gradient bucket size in elements (default: 40M).")
    overlap_grad_reduce: bool = F(False, "Reduce gradient buckets during backward.")
    overlap_param_gather: bool = F(False, "Gather Zero-1 params during the next forward (needs "
                                          "--use-distributed-optimizer --overlap-grad-reduce).")
    accumulate_allreduce_grads_in_fp32: bool = F(False, "Keep the gradient buffer in fp32 under bf16.")
    distributed_backend: Optional[str] = F(None, "gloo | nccl (default: nccl with CUDA, else gloo).",
                                           choices=["gloo", "nccl"])
    distributed_timeout_minutes: int = F(10, "Timeout of collectives (NCCL watchdog) in minutes, default 10; waits for "
                                             "one-rank work such as building dataset indices use max(this, 60).")


@dataclass
class OptimConfig:
    lr: float = F(3e-4, "Peak learning rate.")
    min_lr: float = F(0.0, "Floor of the decay.")
    lr_decay_style: str = F("cosine", "constant | linear | cosine | WSD | inverse-square-root.",
                            choices=["constant", "linear", "cosine", "WSD", "inverse-square-root"])
    lr_warmup_iters: int = F(0, "Linear warmup steps from 0 to --lr.")
    lr_decay_iters: Optional[int] = F(None, "Steps over which the LR decays (default --train-iters); fixes the schedule so resuming with a larger --train-iters continues it.")
    lr_wsd_decay_iters: Optional[int] = F(None, "WSD: steps of the final decay phase (default 10% of decay iters).")
    weight_decay: float = F(0.01, "AdamW weight decay (not on biases and norms).")
    adam_beta1: float = F(0.9, "AdamW beta1.")
    adam_beta2: float = F(0.95, "AdamW beta2.")
    adam_eps: float = F(1e-8, "AdamW epsilon.")
    clip_grad: float = F(1.0, "Global gradient-norm clip (0 = off).")
    bf16: bool = F(False, "bf16 compute with fp32 master weights.")
    tf32: Optional[bool] = F(None, "TF32 tensor cores for fp32 matmuls/convolutions on CUDA (default: on for "
                                   "CUDA fp32, off elsewhere; --no-tf32 for bitwise-stricter parity runs).")
    fp16: bool = F(False, "fp16 compute, fp32 master weights, dynamic loss scaling.")
    initial_loss_scale: float = F(2.0 ** 16, "fp16: starting loss scale.")
    min_loss_scale: float = F(1.0, "fp16: the scale never drops below this.")
    loss_scale_window: int = F(1000, "fp16: clean steps before the scale doubles.")
    hysteresis: int = F(2, "fp16: overflows tolerated before the scale halves.")
    max_skipped_iters: int = F(10, "Abort after this many consecutive skipped (NaN/Inf) steps.")
    optimizer: str = F("adam", "adam (AdamW) | sgd | adafactor | muon (Megatron's --optimizer; adafactor is ours). "
                               "When to use each: docs/optimizers.md.", choices=["adam", "sgd", "adafactor", "muon"])
    sgd_momentum: float = F(0.9, "SGD momentum (0: plain SGD, no optimizer state).")
    muon_momentum: float = F(0.9, "Muon: momentum of its internal SGD (Megatron's default 0.9; torch.optim.Muon's 0.95).")
    muon_use_nesterov: bool = F(False, "Muon: Nesterov momentum (torch.optim.Muon's default; Megatron's is off).")
    muon_split_qkv: bool = F(True, "Muon: orthogonalise q, k, v (and a gated MLP's gate, up) as separate matrices, "
                                   "as Megatron does (its --muon-no-split-qkv is --no-muon-split-qkv here).")
    muon_scale_mode: str = F("spectral", "Muon: update scale for an out x in matrix: spectral sqrt(max(out, in)), "
                                         "unit_rms_norm sqrt(out/in), shape_scaling sqrt(max(1, out/in)) "
                                         "(torch.optim.Muon's default).",
                             choices=["spectral", "unit_rms_norm", "shape_scaling"])
    muon_num_ns_steps: int = F(5, "Muon: Newton-Schulz iterations.")
    muon_fp32_matmul_prec: str = F("medium", "Muon: Newton-Schulz matmuls in bf16 (low, medium: torch.optim.Muon's "
                                             "numerics) or fp32 (high).", choices=["low", "medium", "high"])
    muon_tp_mode: str = F("duplicated", "Muon under TP: every TP rank gathers the full matrix and orthogonalises it "
                                        "(Megatron's duplicated mode; blockwise / distributed are not implemented).",
                          choices=["duplicated"])
    muon_extra_scale_factor: float = F(1.0, "Muon: extra factor on the scaled update.")
    adafactor_beta2_decay: float = F(-0.8, "Adafactor: second-moment decay exponent, 1 - beta2_t = t^decay "
                                           "(torch.optim.Adafactor's beta2_decay).")
    adafactor_eps1: Optional[float] = F(None, "Adafactor: floor of the second-moment estimate (default: fp32 eps).")
    adafactor_eps2: float = F(1e-3, "Adafactor: floor of the parameter RMS that scales the step.")
    adafactor_d: float = F(1.0, "Adafactor: update clipping threshold d (torch's d; HF's clip_threshold).")
    ema_decay: Optional[float] = F(None, "Keep an fp32 EMA of the (master) weights with this decay beta in [0, 1), "
                                         "updated after each optimizer step and saved with the checkpoint (optim.ema.*).")
    ema_start_iter: int = F(0, "EMA: until this many optimizer steps have been applied, the EMA is a copy of the "
                               "weights.")


@dataclass
class DataConfig:
    data_path: list = F([], "Datasets: 'w1 prefix1 w2 prefix2 ...' or just prefixes. Default: the embedded corpus.", nargs="+")
    split: str = F("949,50,1", "Document split train,valid,test.")
    tokenizer_model: Optional[str] = F(None, "sentencepiece .model, or hf:<dir>. Default: the --load checkpoint's tokenizer, else the embedded Thai+English model.")
    data_cache_path: Optional[str] = F(None, "Where sample indices are cached (default: beside the data).")
    micro_batch_size: int = F(4, "Samples per micro-batch per DP rank.")
    global_batch_size: int = F(16, "Samples per optimizer step over all DP ranks.")
    reset_position_ids: bool = F(False, "Positions restart after each EOD.")
    reset_attention_mask: bool = F(False, "Attention never crosses an EOD (real document masking).")
    eod_mask_loss: bool = F(False, "No loss on predicting the token after an EOD.")


@dataclass
class TrainConfig:
    train_iters: int = F(100, "Total optimizer steps (a resumed run with a larger value continues).")
    seed: int = F(1234, "Seed for weights, data order and dropout.")
    save: Optional[str] = F(None, "Checkpoint directory.")
    load: Optional[str] = F(None, "Checkpoint directory to resume from. Without --tokenizer-model its tokenizer is used.")
    finetune: bool = F(False, "Load only the weights of --load (Megatron's flag): iteration, optimizer, RNG and data "
                              "position start fresh. Resume the fine-tuning run itself without it.")
    sft: bool = F(False, "Supervised fine-tuning on tools/preprocess_sft.py output (--data-path PREFIX): conversations "
                         "packed per sequence, each attending only to itself, loss on assistant tokens only.")
    sft_loss_normalization: str = F("token", "SFT loss: token = mean over every loss token of the global batch "
                                             "(Megatron's --calculate-per-token-loss; independent of the micro-batch, "
                                             "accumulation and DP split); conversation = mean per conversation, then "
                                             "over conversations.", choices=["token", "conversation"])
    dpo: bool = F(False, "Direct preference optimisation on tools/preprocess_dpo.py output (--data-path PREFIX) "
                         "with the reference's log-probabilities from --ref-logps; dropout is forced to 0.")
    ref_logps: Optional[str] = F(None, "DPO: the reference log-probabilities file of tools/compute_ref_logps.py "
                                       "(refused when the data or the --finetune checkpoint differ from its own).")
    dpo_loss: str = F("sigmoid", "DPO loss: sigmoid (DPO), ipo (per-token averaged IPO), hinge (SLiC).",
                      choices=["sigmoid", "ipo", "hinge"])
    dpo_beta: float = F(0.1, "DPO beta (TRL's beta).")
    dpo_label_smoothing: float = F(0.0, "Conservative DPO: the probability eps that a label is flipped (sigmoid loss).")
    dpo_sft_weight: float = F(0.0, "Adds this x the mean NLL of the chosen completion tokens (RPO; TRL's rpo_alpha).")
    skip_train: bool = F(False, "Evaluate only (no train split needed: --split 0,100,0 works).")
    full_validation: bool = F(False, "Each evaluation visits every sample of the valid split exactly once (the last "
                                     "batch padded, padding excluded from the loss) instead of --eval-iters batches.")
    use_checkpoint_args: bool = F(False, "Take the model architecture (layers, widths, heads, norms, RoPE, biases, ...) from the --load checkpoint, e.g. one written by tools/convert_from_hf.py.")
    save_interval: Optional[int] = F(None, "Save every N steps (and at the end).")
    keep_last: Optional[int] = F(None, "Keep only the last k checkpoints.")
    async_save: bool = F(False, "Write checkpoints from a CPU copy in a background thread; committed at the next save or the end.")
    eval_interval: Optional[int] = F(None, "Evaluate every N steps.")
    eval_iters: int = F(2, "Batches per evaluation.")
    eval_ema: bool = F(False, "Each evaluation also runs with the EMA weights (--ema-decay), logged as split valid_ema.")
    log_interval: int = F(10, "Steps between console/JSONL log lines.")
    log_dir: Optional[str] = F(None, "metrics.jsonl directory (default: --save, else runs/).")
    tensorboard_dir: Optional[str] = F(None, "TensorBoard directory (when tensorboard is installed).")
    peak_tflops: Optional[float] = F(None, "Peak TFLOP/s per device for MFU (default: GPU table, or measured on CPU).")
    compile: bool = F(False, "torch.compile the model.")
    num_threads: Optional[int] = F(None, "CPU threads per process (torch.set_num_threads).")
    pipeline_trace_dir: Optional[str] = F(None, "Write each rank's pipeline schedule trace of the last step here (JSON).")
    wandb_project: Optional[str] = F(None, "Weights & Biases project: log the metrics.jsonl scalars and the resolved "
                                           "config to W&B (needs `pip install megatron_th[wandb]`; WANDB_MODE=offline "
                                           "works without network). A resumed run continues the same W&B run.")
    wandb_exp_name: Optional[str] = F(None, "W&B run name (default: one W&B makes up).")
    wandb_save_dir: Optional[str] = F(None, "Directory for W&B's local run files (default: <--save>/wandb, else ./wandb).")
    wandb_entity: Optional[str] = F(None, "W&B entity (user or team) owning the project (default: your W&B default).")


SECTIONS = {"model": ModelConfig, "parallel": ParallelConfig, "optim": OptimConfig,
            "data": DataConfig, "train": TrainConfig}


# Model fields that define the weights and the function computed; what checkpoints and conversion carry over
# (--use-checkpoint-args).
ARCH_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
               "kv_channels", "max_position_embeddings", "position_embedding_type", "rotary_base",
               "normalization", "norm_epsilon", "swiglu", "openai_gelu", "disable_bias_linear",
               "add_qkv_bias", "untie_embeddings_and_output_weights", "make_vocab_size_divisible_by",
               "use_rope_scaling", "rope_scaling_type", "rope_scaling_factor", "rope_scaling_low_freq_factor",
               "rope_scaling_high_freq_factor", "rope_scaling_original_max_position_embeddings",
               "rope_local_base_freq", "window_size", "layer_types", "qk_layernorm", "apply_layernorm_1p",
               "sandwich_norm", "scale_embeddings", "query_pre_attn_scalar", "vocab_size", "geglu")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        cfg = cls()
        for sec, values in d.items():
            for k, v in values.items():
                setattr(getattr(cfg, sec), k, v)
        return cfg


class ConfigError(ValueError):
    pass


def _owner() -> dict:
    """field name -> (section, dataclass field)."""
    out = {}
    for sec, klass in SECTIONS.items():
        for f in dataclasses.fields(klass):
            out[f.name] = (sec, f)
    return out


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


def finalize(cfg: Config, world_size: int = 1) -> Config:
    """Fill derived defaults and reject impossible settings with one line naming the flag."""
    m, p, o, d, t = cfg.model, cfg.parallel, cfg.optim, cfg.data, cfg.train

    def need(cond, msg):
        if not cond:
            raise ConfigError(msg)

    for name in ("num_layers", "hidden_size", "num_attention_heads", "seq_length", "micro_batch_size",
                 "global_batch_size", "tensor_model_parallel_size", "pipeline_model_parallel_size"):
        sec, _ = _owner()[name]
        need(getattr(getattr(cfg, sec), name) > 0, f"--{name.replace('_', '-')} must be positive")
    if m.num_query_groups is None:
        m.num_query_groups = m.num_attention_heads
    if m.kv_channels is None:
        need(m.hidden_size % m.num_attention_heads == 0,
             f"--hidden-size {m.hidden_size} is not divisible by --num-attention-heads {m.num_attention_heads}")
        m.kv_channels = m.hidden_size // m.num_attention_heads
    need(m.num_query_groups > 0 and m.num_attention_heads % m.num_query_groups == 0,
         f"--num-attention-heads {m.num_attention_heads} is not divisible by --num-query-groups {m.num_query_groups}")
    if m.ffn_hidden_size is None:
        m.ffn_hidden_size = (-(-int(8 * m.hidden_size / 3) // 64) * 64) if m.gated_linear_unit else 4 * m.hidden_size
    if m.max_position_embeddings is None:
        m.max_position_embeddings = m.seq_length
    if m.position_embedding_type == "learned_absolute":
        need(m.seq_length <= m.max_position_embeddings,
             f"--seq-length {m.seq_length} exceeds --max-position-embeddings {m.max_position_embeddings}")
    if m.position_embedding_type == "rope":
        need(m.kv_channels % 2 == 0, f"RoPE needs an even head dim, got --kv-channels {m.kv_channels}")
    check_model_options(m, need)
    for name in ("hidden_dropout", "attention_dropout"):
        need(0.0 <= getattr(m, name) < 1.0, f"--{name.replace('_', '-')} must be in [0, 1)")
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    need(world_size % (tp * pp) == 0,
         f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} "
         f"x --pipeline-model-parallel-size {pp}")
    dp = world_size // (tp * pp)
    need(m.num_attention_heads % tp == 0,
         f"--num-attention-heads {m.num_attention_heads} is not divisible by --tensor-model-parallel-size {tp}")
    need(m.num_query_groups % tp == 0,
         f"--num-query-groups {m.num_query_groups} is not divisible by --tensor-model-parallel-size {tp}")
    need(m.ffn_hidden_size % tp == 0,
         f"--ffn-hidden-size {m.ffn_hidden_size} is not divisible by --tensor-model-parallel-size {tp}")
    explicit = p.decoder_first_pipeline_num_layers is not None or p.decoder_last_pipeline_num_layers is not None
    need(explicit or m.num_layers % pp == 0,
         f"--num-layers {m.num_layers} is not divisible by --pipeline-model-parallel-size {pp}")
    v = 1
    if p.num_layers_per_virtual_pipeline_stage:
        per = p.num_layers_per_virtual_pipeline_stage
        need(pp > 1, "--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size > 1")
        need(per > 0 and (m.num_layers // pp) % per == 0,
             f"--num-layers-per-virtual-pipeline-stage {per} does not divide the {m.num_layers // pp} layers per stage")
        v = (m.num_layers // pp) // per
    from megatron_th.parallel.stages import layer_ranges  # raises ConfigError naming the flags
    layer_ranges(m.num_layers, pp, v, p.decoder_first_pipeline_num_layers, p.decoder_last_pipeline_num_layers)
    need(d.global_batch_size % (d.micro_batch_size * dp) == 0,
         f"--global-batch-size {d.global_batch_size} is not divisible by --micro-batch-size "
         f"{d.micro_batch_size} x data-parallel size {dp}")
    if v > 1:
        micro = d.global_batch_size // (d.micro_batch_size * dp)
        need(micro % pp == 0, f"interleaved 1F1B needs micro-batches per step ({micro} = --global-batch-size / "
             f"(--micro-batch-size x DP)) to be a multiple of --pipeline-model-parallel-size {pp}")
    need(not (o.bf16 and o.fp16), "--bf16 and --fp16 are mutually exclusive")
    if p.overlap_param_gather:  # as Megatron-LM's arguments.py: the gathers ride on Zero-1's overlapped buckets
        missing = [f for f, on in (("--use-distributed-optimizer", p.use_distributed_optimizer),
                                   ("--overlap-grad-reduce", p.overlap_grad_reduce)) if not on]
        need(not missing, f"--overlap-param-gather requires {' '.join(missing)}")
        from megatron_th.training.optimizers import FLAT_SHARDED

        need(o.optimizer in FLAT_SHARDED, f"--overlap-param-gather with --optimizer {o.optimizer}: its Zero-1 owns "
             "whole parameters and gathers them in one collective (parallel/zero_params.py), with no buckets to "
             f"overlap; drop the flag or use --optimizer {'|'.join(FLAT_SHARDED)}")
    sharded_dropout = m.attention_dropout > 0 or (p.sequence_parallel and m.hidden_dropout > 0)
    need(not (m.recompute_granularity and tp > 1 and sharded_dropout),
         "--recompute-granularity with --tensor-model-parallel-size > 1 needs --attention-dropout 0 (and "
         "--hidden-dropout 0 under --sequence-parallel): recomputation does not replay the per-TP-rank "
         "dropout stream yet")
    need(o.lr >= 0 and o.min_lr >= 0 and o.min_lr <= o.lr, f"--min-lr {o.min_lr} must be in [0, --lr {o.lr}]")
    if o.lr_decay_iters is None:
        o.lr_decay_iters = t.train_iters
    need(o.lr_warmup_iters >= 0, "--lr-warmup-iters must be >= 0")
    need(o.lr_decay_iters >= o.lr_warmup_iters,
         f"--lr-warmup-iters {o.lr_warmup_iters} exceeds --lr-decay-iters {o.lr_decay_iters}")
    need(t.train_iters >= 0, "--train-iters must be >= 0")
    need(not (t.sft and t.dpo), "--sft and --dpo are mutually exclusive")
    need(t.dpo_beta > 0, f"--dpo-beta {t.dpo_beta} must be positive")
    need(0.0 <= t.dpo_label_smoothing < 0.5, f"--dpo-label-smoothing {t.dpo_label_smoothing} must be in [0, 0.5)")
    need(t.log_interval > 0, "--log-interval must be positive")
    check_optimizer_options(o, t, need)
    for name in ("save_interval", "eval_interval", "keep_last"):
        val = getattr(t, name)
        need(val is None or val > 0, f"--{name.replace('_', '-')} must be positive")
    return cfg


def check_optimizer_options(o: OptimConfig, t: TrainConfig, need) -> None:
    """--optimizer's hyper-parameters and the EMA flags (docs/optimizers.md)."""
    need(0 <= o.sgd_momentum < 1, f"--sgd-momentum {o.sgd_momentum} must be in [0, 1)")
    need(0 <= o.muon_momentum < 1, f"--muon-momentum {o.muon_momentum} must be in [0, 1)")
    need(o.muon_extra_scale_factor > 0, f"--muon-extra-scale-factor {o.muon_extra_scale_factor} must be > 0")
    need(o.muon_num_ns_steps >= 1, f"--muon-num-ns-steps {o.muon_num_ns_steps} must be >= 1")
    need(o.adafactor_beta2_decay <= 0, f"--adafactor-beta2-decay {o.adafactor_beta2_decay} must be <= 0")
    need(o.adafactor_d >= 1, f"--adafactor-d {o.adafactor_d} must be >= 1")
    need(o.adafactor_eps1 is None or o.adafactor_eps1 >= 0, "--adafactor-eps1 must be >= 0")
    need(o.adafactor_eps2 >= 0, "--adafactor-eps2 must be >= 0")
    need(o.ema_decay is None or 0 <= o.ema_decay < 1, f"--ema-decay {o.ema_decay} must be in [0, 1)")
    need(o.ema_start_iter >= 0, "--ema-start-iter must be >= 0")
    need(not t.eval_ema or o.ema_decay is not None, "--eval-ema needs --ema-decay")
    need(not o.ema_start_iter or o.ema_decay is not None, "--ema-start-iter needs --ema-decay")


def check_model_options(m: ModelConfig, need) -> None:
    """The newer architecture options (RoPE scaling, windows, QK-norm, Gemma's) that must agree."""
    rope = m.position_embedding_type == "rope"
    need(not m.use_rope_scaling or rope, "--use-rope-scaling needs --position-embedding-type rope")
    need(m.rope_local_base_freq is None or rope, "--rope-local-base-freq needs --position-embedding-type rope")
    need(not m.use_rope_scaling or m.rope_scaling_factor >= 1.0,
         f"--rope-scaling-factor {m.rope_scaling_factor} must be >= 1")
    if m.use_rope_scaling and m.rope_scaling_type == "llama3":
        need(m.rope_scaling_original_max_position_embeddings, "--use-rope-scaling (llama3) needs "
             "--rope-scaling-original-max-position-embeddings")
        need(m.rope_scaling_high_freq_factor > m.rope_scaling_low_freq_factor,
             "--rope-scaling-high-freq-factor must exceed --rope-scaling-low-freq-factor")
    need(m.window_size is None or m.window_size >= 1, f"--window-size {m.window_size} must be >= 1")
    if m.layer_types is not None:
        need(len(m.layer_types) == m.num_layers,
             f"--layer-types has {len(m.layer_types)} entries for --num-layers {m.num_layers}")
        bad = sorted(set(m.layer_types) - {"full_attention", "sliding_attention"})
        need(not bad, f"--layer-types: unknown {bad} (full_attention | sliding_attention)")
        need(m.window_size is not None or "sliding_attention" not in m.layer_types,
             "--layer-types has sliding_attention layers but no --window-size")
    need(not (m.swiglu and m.geglu), "--swiglu and --geglu are mutually exclusive")
    need(m.query_pre_attn_scalar is None or m.query_pre_attn_scalar > 0, "--query-pre-attn-scalar must be positive")
    need(m.vocab_size is None or m.vocab_size > 0, "--vocab-size must be positive")


def data_parallel_size(cfg: Config, world_size: int) -> int:
    return world_size // (cfg.parallel.tensor_model_parallel_size * cfg.parallel.pipeline_model_parallel_size)
