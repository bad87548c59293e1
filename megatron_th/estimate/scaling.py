"""Chinchilla scaling law (Hoffmann et al. 2022, approach 3) as the seeds used it.

    L(N, D) = E + A / N^alpha + B / D^beta,   E = 1.69, A = 406.4, B = 410.7, alpha = 0.34, beta = 0.27

(the paper's fit has beta = 0.28; the seeds' 0.27 is kept so their numbers reproduce). With the
training compute C = 6 N D, minimising L over N gives the closed form

    N_opt = G (C/6)^(beta/(alpha+beta)),   G = (alpha A / (beta B))^(1/(alpha+beta)),   D_opt = C / (6 N_opt).
"""
from __future__ import annotations

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.27


def loss(n_params: float, n_tokens: float) -> float:
    return E + A / n_params ** ALPHA + B / n_tokens ** BETA


def compute_optimal(flops: float) -> dict:
    """N, D and L at the minimum of L under 6 N D = flops."""
    g = (ALPHA * A / (BETA * B)) ** (1.0 / (ALPHA + BETA))
    n = g * (flops / 6.0) ** (BETA / (ALPHA + BETA))
    d = flops / (6.0 * n)
    return {"params": n, "tokens": d, "loss": loss(n, d), "tokens_per_param": d / n}


def chinchilla(n_params: float, n_tokens: float) -> dict:
    """The planned run's predicted loss and the compute-optimal split of the same compute 6 N D."""
    c = 6.0 * n_params * n_tokens
    rule_n = (c / 120.0) ** 0.5  # ~20 tokens per parameter (Hoffmann et al.'s table 3 rule of thumb)
    return {"loss": loss(n_params, n_tokens), "compute_6nd": c, "tokens_per_param": n_tokens / n_params,
            "optimal": compute_optimal(c),
            "twenty_tokens_per_param": {"params": rule_n, "tokens": 20 * rule_n, "loss": loss(rule_n, 20 * rule_n)}}
