"""Steps ``env`` (what this node has) and ``attention_<backend>`` (each backend vs an fp32 reference)."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess

from gpu_check_steps.common import Context, check, skip


def nvidia_smi() -> tuple[list[str], str]:
    """(one "name, memory, driver" line per GPU nvidia-smi lists, or [] ; a note when it cannot run)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi not found"
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [], f"nvidia-smi failed: {e}"
    if out.returncode != 0:
        return [], f"nvidia-smi failed: {(out.stderr or out.stdout).strip()[:200]}"
    return [line.strip() for line in out.stdout.splitlines() if line.strip()], ""


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(ctx: Context):
    """torch / CUDA / NCCL versions, the GPUs torch sees (name, memory) and what nvidia-smi lists.
    Value: GPUs visible to torch. FAIL (GPU mode): none visible, or NCCL missing: the usual faults
    of a fresh node (a CPU-only torch wheel, a driver/CUDA mismatch, CUDA_VISIBLE_DEVICES)."""
    import torch
    import torch.distributed as dist

    smi, smi_note = nvidia_smi()
    n = torch.cuda.device_count() if ctx.mode == "gpu" else 0
    gpus = []
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                     "capability": f"{p.major}.{p.minor}"})
    nccl = None
    if torch.cuda.is_available() and hasattr(torch.cuda, "nccl"):
        try:
            v = torch.cuda.nccl.version()
            nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception as e:  # noqa: BLE001 (report, do not fail the report)
            nccl = f"unavailable ({e})"
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "nccl": nccl, "nccl_available": dist.is_nccl_available(), "gloo_available": dist.is_gloo_available(),
            "gpus": gpus, "nvidia_smi": smi or smi_note, "cpus": os.cpu_count(),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "flash_attn": _version("flash-attn") or _version("flash_attn"),
            "transformer_engine": _version("transformer-engine") or _version("transformer_engine")}
    names = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in gpus) or "no GPU"
    detail = (f"torch {info['torch']}, CUDA {info['cuda']}, NCCL {nccl}, {names}; "
              f"nvidia-smi: {len(smi)} GPU(s){', driver ' + smi[0].split(',')[-1].strip() if smi else ''}"
              f"{' (' + smi_note + ')' if smi_note else ''}; flash-attn {info['flash_attn']}, "
              f"transformer-engine {info['transformer_engine']}")
    if ctx.mode == "cpu":
        yield check("env", info["gloo_available"], 0, "gpus", f"--cpu: gloo on {os.cpu_count()} CPUs; " + detail,
                    extra=info)
        return
    problems = []
    if n == 0:
        hint = (f"torch {torch.__version__} has no CUDA support (a CPU wheel): install a CUDA build"
                if torch.version.cuda is None else
                f"torch (CUDA {torch.version.cuda}) sees no GPU; nvidia-smi lists {len(smi)}; "
                f"check the driver and CUDA_VISIBLE_DEVICES={info['CUDA_VISIBLE_DEVICES']!r}")
        problems.append(hint)
    if n and not info["nccl_available"]:
        problems.append("torch.distributed has no NCCL backend")
    if n and smi and len(smi) > n and info["CUDA_VISIBLE_DEVICES"] is None:
        detail += f"; note: nvidia-smi lists {len(smi)} GPUs, torch sees {n}"
    yield check("env", not problems, n, "gpus", "; ".join(problems + [detail]), extra=info)


def document_lengths(b: int, s: int) -> list[list[int]]:
    """Documents of each row: 1-token documents at a row's start and end, a short one, long ones."""
    first = [1, 5, s // 2, s - 1 - 5 - s // 2]
    second = [s // 3, 1, s - s // 3 - 2, 1]
    rows = [first, second]
    return [rows[i % 2] for i in range(b)]


def reference_attention(q, k, v, doc, window=None):
    """fp32 causal same-document attention written out (no backend code): q [b, nq, s, hd], k/v
    [b, nkv, s, hd], doc [b, s] document ids; ``window``: a query also needs query - key position
    < window (transformers' sliding window). -> [b, nq, s, hd]."""
    import torch

    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    pos = torch.arange(s, device=q.device)
    distance = pos.unsqueeze(1) - pos.unsqueeze(0)  # query - key
    causal = (distance >= 0) & (distance < (s if window is None else window))
    allowed = causal & (doc.unsqueeze(2) == doc.unsqueeze(1))  # [b, s, s]
    scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def unsupported(name: str, device, dtype) -> str | None:
    """Why backend ``name`` cannot run here (None: it can)."""
    import torch

    if name in ("flash", "te") and device.type != "cuda":
        return f"{name} needs CUDA (--cpu)"
    if name == "flex" and device.type != "cuda":
        return "flex has no backward on CPU (torch runs it eagerly there); it is checked on CUDA"
    if name == "flash":
        if dtype not in (torch.float16, torch.bfloat16):
            return "flash-attn needs fp16/bf16"
        if _version("flash-attn") is None and _version("flash_attn") is None:
            return "flash-attn is not installed (pip install flash-attn --no-build-isolation)"
    if name == "te" and _version("transformer-engine") is None and _version("transformer_engine") is None:
        return "transformer-engine is not installed"
    return None


def _backend_names() -> list[str]:
    from megatron_th.model.attention import BACKENDS
    return list(BACKENDS)


def attention_backends(ctx: Context):
    """Every backend of megatron_th.model.attention.BACKENDS in the training dtype vs the fp32
    reference above: output and dq, dk, dv, with packed documents including 1-token ones (sdpa,
    which refuses documents, on plain causal rows, and must refuse the documents), each also with
    a sliding window of s // 4 tokens (shorter than the long documents). Value:
    max |x - ref| / max |ref| over the four tensors of both cases."""
    import torch

    from megatron_th.model.attention import attention

    missing = ctx.gpu_missing()
    names = _backend_names()
    if missing:
        for name in names:
            yield skip(f"attention_{name}", missing, "max_rel_err")
        return
    p, dev, dtype = ctx.profile["attention"], ctx.device, ctx.dtype
    b, nq, nkv, s, hd = p["b"], p["heads"], p["kv_heads"], p["seq"], p["head_dim"]
    if dev.type == "cuda":  # the reference is IEEE fp32 (TF32 off for cuBLAS and cuDNN)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    q, grad = (torch.randn(b, nq, s, hd, generator=g).to(dev) for _ in range(2))
    k, v = (torch.randn(b, nkv, s, hd, generator=g).to(dev) for _ in range(2))
    lengths = document_lengths(b, s)
    bounds = [0]
    for row in lengths:
        for n in row:
            bounds.append(bounds[-1] + n)
    cases = {"docs": torch.tensor(bounds, dtype=torch.int32, device=dev),
             "rows": torch.arange(0, b * s + 1, s, dtype=torch.int32, device=dev)}
    window = max(1, s // 4)
    refs = {}
    for case, cu in cases.items():
        doc = (torch.searchsorted(cu.long(), torch.arange(b * s, device=dev), right=True) - 1).view(b, s)
        for w in (None, window):
            leaves = [x.clone().requires_grad_() for x in (q, k, v)]
            out = reference_attention(*leaves, doc, w)
            out.backward(grad)
            refs[case, w] = [out.detach()] + [x.grad for x in leaves]
    for name in names:
        why = unsupported(name, dev, dtype)
        if why:
            yield skip(f"attention_{name}", why, "max_rel_err")
            continue
        case = "rows" if name == "sdpa" else "docs"
        errs = [0.0] * 4
        for w in (None, window):
            leaves = [x.to(dtype, copy=True).requires_grad_() for x in (q, k, v)]
            out = attention(*leaves, cu_seqlens=cases[case], backend=name, window=w)
            out.backward(grad.to(dtype))
            got = [out.detach()] + [x.grad for x in leaves]
            errs = [max(e, float((a.float() - r).abs().max() / r.abs().max().clamp_min(1e-12)))
                    for e, a, r in zip(errs, got, refs[case, w])]
        err = max(errs)
        ok, note = err <= p["tol"], ""
        if name == "sdpa":  # it must refuse documents rather than attend across them
            try:
                attention(*(x.detach() for x in leaves), cu_seqlens=cases["docs"], backend="sdpa")
                ok, note = False, "; it accepted documents it cannot mask"
            except ValueError:
                note = "; plain causal rows (it refuses documents, as it must)"
        docs = "" if name == "sdpa" else f", documents {lengths[0]} / {lengths[1 % b]}"
        yield check(f"attention_{name}", ok, err, "max_rel_err",
                    f"{str(dtype).replace('torch.', '')} vs fp32 reference, tolerance {p['tol']:g}; out/dq/dk/dv "
                    + "/".join(f"{e:.1e}" for e in errs) + f"; b {b} heads {nq}/{nkv} s {s} hd {hd}{docs}; "
                f"without and with window {window}{note}")


attention_backends.names = lambda ctx: [f"attention_{n}" for n in _backend_names()]


def loss_kernel(ctx: Context):
    """The TP-1 loss (megatron_th.model.loss.unchunked_cross_entropy: its backward writes the
    log-softmax gradient into the nll gradient's buffer, checked bitwise only on CPU) against
    F.cross_entropy on this device, fp32, with ignored labels: loss and logits gradient. Value:
    max |x - ref| / max |ref| over both; the two run the same kernels, so it should be 0."""
    import torch
    import torch.nn.functional as F

    from megatron_th.model.loss import IGNORE_INDEX, unchunked_cross_entropy

    missing = ctx.gpu_missing()
    if missing:
        yield skip("loss_kernel", missing, "max_rel_err")
        return
    dev = ctx.device
    g = torch.Generator().manual_seed(0)
    b, s, h, vocab, padded = 2, 256, 64, 50_000, 50_048  # a real vocabulary: the kernels' large-row path
    x = torch.randn(b, s, h, generator=g).to(dev)
    w = (torch.randn(padded, h, generator=g) * 0.1).to(dev)
    labels = torch.randint(0, vocab, (b, s), generator=g)
    labels[:, :16] = IGNORE_INDEX
    labels, grad = labels.to(dev), torch.randn(b, s, generator=g).to(dev)
    got, ref = [], []
    for fn, out in ((lambda xx, ww: unchunked_cross_entropy(xx, ww, labels, vocab), got),
                    (lambda xx, ww: F.cross_entropy(F.linear(xx, ww)[..., :vocab].flatten(0, 1), labels.flatten(),
                                                    reduction="none", ignore_index=IGNORE_INDEX).view(b, s), ref)):
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = fn(xx, ww)
        loss.backward(grad)
        out += [loss.detach(), xx.grad, ww.grad]
    errs = [float((a - r).abs().max() / r.abs().max().clamp_min(1e-12)) for a, r in zip(got, ref)]
    yield check("loss_kernel", max(errs) <= 1e-6, max(errs), "max_rel_err",
                f"fp32, vocab {vocab} (padded {padded}), {b * s} tokens, 16 per row ignored; "
                f"loss/dx/dW " + "/".join(f"{e:.1e}" for e in errs))
