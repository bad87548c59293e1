"""Cleaning a Thai+English web crawl on datatrove: boilerplate lines, quality filters routed by
script, near- and exact-duplicate removal keeping the first copy, PII, and a writer to Megatron
``.bin/.idx`` (``tools/clean_data.py``; the ``[data]`` extra: datatrove + pythainlp).

Modules: ``text`` (character classes, line normalization, Jaccard), ``tokenizers`` (word
tokenizers for datatrove that download nothing), ``records`` (reader and writers), ``boilerplate``,
``filters``, ``dedup``, ``pii``, ``megatron_writer``, ``finalize``, ``stages`` (the pipeline),
``executors`` (local / Slurm / Ray), ``config`` (thai.yaml), ``cli``, ``synthetic`` (a generated
test corpus with planted duplicates, boilerplate and PII).
"""
