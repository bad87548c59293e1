"""``finalize``: derived defaults (head dim, FFN width, LR decay...) and every impossible
combination of flags refused with one ``ConfigError`` line naming them."""
from megatron_th.config.sections import Config, ConfigError, ModelConfig, OptimConfig, TrainConfig, _owner


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
