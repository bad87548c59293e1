"""Console entry points (``[project.scripts]`` in pyproject.toml); tools/*.py call the same ``main``.

======================== =========================================== ============================
command                  function                                    script in a checkout
======================== =========================================== ============================
megatron-th-preprocess   ``megatron_th.data.preprocess.main``        tools/preprocess_data.py
megatron-th-convert-to-hf ``megatron_th.cli.convert_to_hf.main``      tools/convert_to_hf.py
megatron-th-convert-from-hf ``megatron_th.cli.convert_from_hf.main``  tools/convert_from_hf.py
megatron-th-estimate     ``megatron_th.cli.estimate.main``           tools/estimate.py
======================== =========================================== ============================

Each ``main(argv=None) -> int`` returns the exit status and prints a bad flag or input as one
``error: ...`` line (a malformed flag too: every command's parser is cli/parser.py's
``ArgumentParser``, exit status 2); each module also runs as ``python -m megatron_th.cli.NAME``.
"""
