"""The run configuration's sections: one dataclass per flag group (model, parallel, optim, data,
train) whose field docs are the ``--help``, the whole ``Config``, ``ARCH_FIELDS`` (what
``--use-checkpoint-args`` carries over) and ``ConfigError``."""
import dataclasses
from dataclasses import dataclass, field
from typing import Optional


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
