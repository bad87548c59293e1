"""The estimate as a plain-text table (tools/estimate.py prints it)."""
from __future__ import annotations

GiB = 2 ** 30


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def count(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _rows(rows: list, width: int = 34) -> list[str]:
    return [f"  {k:<{width}} {v}" for k, v in rows]


def _extras(mo: dict) -> str:
    """The architecture options beyond the GPT/Llama block, as ", a, b" (empty when none)."""
    out = []
    if mo.get("kv_channels") and mo["kv_channels"] * mo["heads"] != mo["hidden"]:
        out.append(f"head dim {mo['kv_channels']}")
    if mo.get("rope_scaling"):
        out.append(f"{mo['rope_scaling']} RoPE scaling")
    if mo.get("qk_layernorm"):
        out.append("QK-norm")
    if mo.get("apply_layernorm_1p"):
        out.append("(1 + w) norms")
    if mo.get("sandwich_norm"):
        out.append("sandwich norms")
    if mo.get("sliding_layers"):
        out.append(f"window {mo['window_size']} on {mo['sliding_layers']}/{mo['layers']} layers")
    return "".join(", " + x for x in out)


def _header(e: dict) -> list[str]:
    mo, lay, g = e["model"], e["layout"], e["gpu"]
    mlp = "SwiGLU" if mo["swiglu"] else ("GeGLU" if mo.get("geglu") else "GeLU")
    return [
        f"model   {mo['layers']} layers, hidden {mo['hidden']}, {mo['heads']} heads ({mo['query_groups']} KV), "
        f"ffn {mo['ffn']} {mlp}, {mo['normalization']}, {mo['position_embedding']}{_extras(mo)}; "
        f"seq {mo['seq_length']}; "
        f"vocab {mo['vocab']} (padded {mo['padded_vocab']}); {mo['precision']}",
        f"layout  {lay['gpus']} x {g['name']} ({g['peak_tflops']:g} TFLOP/s {mo['precision']}, {g['memory_gib']:g} GiB): "
        f"TP {lay['tp']} x PP {lay['pp']}" + (f" (x{lay['virtual_stages']} interleaved)" if lay["virtual_stages"] > 1 else "")
        + f" x DP {lay['dp']}; SP {'on' if lay['sequence_parallel'] else 'off'}, Zero-1 {'on' if lay['zero1'] else 'off'}, "
        f"recompute {lay['recompute'] or 'none'}; micro-batch {lay['micro_batch_size']}, global batch "
        f"{lay['global_batch_size']} ({lay['micro_batches']} micro-batches per step per DP rank)",
    ]


def _params(e: dict) -> list[str]:
    p = e["params"]
    rows = [("total", count(p["total"])), ("embedding (word + position)", count(p["embedding"])),
            ("output layer (untied)", count(p["output_layer"])), ("non-embedding", count(p["non_embedding"])),
            ("per layer", count(p["per_layer"]))]
    for st in p["stages"]:
        spans = ", ".join(f"{lo}-{hi - 1}" for lo, hi in st["layers"])
        rows.append((f"PP stage {st['pp_rank']} (layers {spans})",
                     f"{count(st['params'])}; per GPU (TP shard) {count(st['params_per_rank'])}"))
    return ["Parameters"] + _rows(rows)


def _compute(e: dict) -> list[str]:
    f, rec = e["flops"], e["layout"]["recompute"] or "none"
    again = " + the chunked loss's logits" if f.get("loss_recomputes_logits") else ""
    rows = [("FLOPs per token", f"model {f['model_per_token']:.3e}, hardware {f['hardware_per_token']:.3e} "
             f"(recompute {rec}{again})"),
            ("FLOPs per iteration", f"model {f['model_per_iteration']:.3e}, hardware {f['hardware_per_iteration']:.3e}; "
             f"with full recompute {f['with_full_recompute_per_iteration']:.3e}")]
    if "seconds_per_iteration" in f:
        rows += [(f"at MFU {100 * f['mfu']:.0f}% (HFU {100 * f['hfu']:.0f}%)",
                  f"{f['model_tflops_per_gpu']:.1f} model TFLOP/s per GPU; {duration(f['seconds_per_iteration'])} "
                  f"per iteration; {count(f['tokens_per_second'])} tokens/s"),
                 (f"{count(e['train_tokens'])} tokens", f"{f['iterations']:,.0f} iterations, {duration(f['seconds'])}, "
                  f"{f['gpu_hours']:,.0f} GPU-hours" + (f", cost {f['cost']:,.0f} at {e['price_per_gpu_hour']:g} per "
                                                          f"GPU-hour" if "cost" in f else ""))]
    else:
        rows.append(("time", f"no {e['model']['precision']} peak for {e['gpu']['name']}"))
    return ["Compute"] + _rows(rows)


def _memory(e: dict) -> list[str]:
    mem = e["memory"]
    ranks = mem["ranks"]
    shown = ranks if len(ranks) <= 4 else [ranks[0], ranks[mem["peak_pp_rank"]], ranks[-1]]
    shown = list({r["pp_rank"]: r for r in shown}.values())
    head = f"  {'Memory per GPU':<34} " + " ".join(f"{'PP rank ' + str(r['pp_rank']):>14}" for r in shown)
    lines = [head]

    def row(label, key, fmt=gib):
        lines.append(f"  {label:<34} " + " ".join(f"{fmt(r[key]):>14}" for r in shown))

    row("weights", "weights")
    row("gradients", "grads")
    row("optimizer (fp32 master + moments)", "optimizer")
    row("activations in flight", "activations")
    row("  micro-batch chunks in flight", "inflight_chunks", fmt=str)
    row("  per layer, one micro-batch", "activation_per_layer")
    row(f"loss transient ({e['model'].get('loss', 'full logits')})", "logits_transient")
    if any(r["recompute_transient"] for r in shown):
        row("re-run layer (full recompute)", "recompute_transient")
    row("total", "total")
    bpp = mem["bytes_per_param"]
    usable = e["gpu"]["usable_bytes"]
    lines.append(f"  static bytes per parameter: {bpp['params']:g} weights + {bpp['grads']:g} grads + "
                 f"{bpp['master'] + bpp['moments']:.3g} optimizer = {bpp['total']:.3g}")
    lay = e["layout"]
    if lay["dp"] > 1 and not lay["zero1"]:
        z = mem["bytes_per_param_zero1"]
        lines.append(f"    with Zero-1 over DP {lay['dp']} (--use-distributed-optimizer): {z['total']:.3g}")
    rc = mem["activation_per_layer_by_recompute"]
    lines.append(f"  activations per layer, one micro-batch: {gib(rc['None'])} without recompute, "
                 f"{gib(rc['selective'])} selective, {gib(rc['full'])} full")
    verdict = "fits" if mem["fits"] else "DOES NOT FIT"
    lines.append(f"  peak {gib(mem['peak'])} on PP rank {mem['peak_pp_rank']}: {verdict} in {gib(usable)} "
                 f"({e['gpu']['memory_gib']:g} GiB - {100 * e['gpu']['headroom']:.0f}% headroom)")
    terms = ranks[mem["peak_pp_rank"]]["activation_terms"]
    lines.append(f"  activation terms per layer (one micro-batch, one TP rank, {e['device_kernels']} kernels):")
    lines += [f"    {k:<44} {gib(v):>12}" for k, v in terms.items()]
    return lines


def _checkpoint(e: dict) -> list[str]:
    ours, ds = e["checkpoint"]["ours"], e["checkpoint"]["deepspeed_fp16"]
    return ["Checkpoint on disk"] + _rows([
        ("ours (weights + optimizer)", f"{gib(ours['weights'])} + {gib(ours['optimizer'])} = {gib(ours['total'])}"),
        ("DeepSpeed fp16 layout (18 B/param)", f"{gib(ds['weights'])} fp32 weights + {gib(ds['optimizer'])} "
                                               f"optimizer = {gib(ds['total'])}")])


def _chinchilla(e: dict) -> list[str]:
    ch = e["chinchilla"]
    opt, rule = ch["optimal"], ch["twenty_tokens_per_param"]
    return ["Chinchilla  L(N, D) = 1.69 + 406.4/N^0.34 + 410.7/D^0.27,  C = 6ND = " + f"{ch['compute_6nd']:.3g}"] + _rows([
        ("this run", f"N {count(e['params']['total'])}, D {count(e['train_tokens'])} "
                     f"({ch['tokens_per_param']:.1f} tokens/param) -> loss {ch['loss']:.3f}"),
        ("compute-optimal (min L at this C)", f"N {count(opt['params'])}, D {count(opt['tokens'])} "
                                              f"({opt['tokens_per_param']:.1f} tokens/param) -> loss {opt['loss']:.3f}"),
        ("20 tokens/param at this C", f"N {count(rule['params'])}, D {count(rule['tokens'])} -> loss {rule['loss']:.3f}")])


def _comm(e: dict) -> list[str]:
    c = e["comm_per_step"]
    return ["Communication per step, peak GPU (bytes as parallel/comm.py counts them)"] + _rows([
        ("TP / PP / DP", f"{gib(c['tp'])} / {gib(c['pp'])} / {gib(c['dp'])}")])


def _advice(e: dict) -> list[str]:
    a = e.get("advice")
    if not a:
        return []
    if not a.get("changes"):
        return ["Smallest change that fits", "  no valid layout of these GPUs to try"]
    lay = a["layout"]
    what = (f"TP {lay['tp']} x PP {lay['pp']} x DP {lay['dp']}, micro-batch {lay['micro_batch_size']}, "
            f"recompute {lay['recompute'] or 'none'}, Zero-1 {'on' if lay['zero1'] else 'off'}")
    if a["fits"]:
        return ["Smallest change that fits", f"  {a['flags']}", f"  -> {what}: peak {gib(a['peak'])}"]
    return ["Smallest change that fits", f"  none of {a['tried']} candidates fits on {lay['gpus']} GPUs; the lowest "
            f"peak is {gib(a['peak'])} with {a['flags']} ({what}): add GPUs"]


def format_report(e: dict) -> str:
    parts = [_header(e), _params(e), _compute(e), _memory(e), _checkpoint(e), _chinchilla(e), _comm(e), _advice(e)]
    return "\n\n".join("\n".join(p) for p in parts if p)
