"""Progress bars (megatron_th/utils/bars.py, tqdm) as users see them: a redrawn bar on a terminal,
complete periodic lines in logs and pipes, nothing with --quiet or for a job shorter than the log
interval, and messages that never land inside a bar. Driven through preprocessing and conversion.

No timing: ``bars.LOG_INTERVAL`` is patched to 0 (a line at every update) or to a day (none).
"""
import importlib.util
import io
import json
import re
import sys

import pytest

from megatron_th.data import preprocess
from megatron_th.utils import bars

HAVE_HF = importlib.util.find_spec("transformers") is not None
if HAVE_HF:  # imported at collection, as the rest of the suite does
    from megatron_th.convert.from_hf import import_from_hf
    from megatron_th.convert.to_hf import export_to_hf
    from tests.test_convert_hf import VARIANTS, _save_ours

LINE = re.compile(r"^tokenizing: +(\d+)% \S+/\S+ \[\S+<\S+, \S+B/s, docs (\d+), tokens \S+\]$")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _input(tmp_path):
    p = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": f"ข้อความที่ {i} " * 20}, ensure_ascii=False) for i in range(60)]
    lines[5] = lines[41] = '{"text": "broken'  # two bad records: warnings while the bar is open
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def _preprocess(tmp_path, tokenizer_model, *extra):
    args = preprocess.build_parser().parse_args(
        ["--input", str(_input(tmp_path)), "--tokenizer-model", tokenizer_model, "--output-prefix",
         str(tmp_path / "o"), "--chunk-size", "8", *extra])
    return preprocess.run(args)


def test_log_lines_off_a_terminal(tmp_path, tokenizer_model, capsys, monkeypatch):
    monkeypatch.setattr(bars, "LOG_INTERVAL", 0.0)
    summary = _preprocess(tmp_path, tokenizer_model)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    progress = [line for line in lines if line.startswith("tokenizing")]
    assert len(progress) == 8, err  # one per chunk of 8 records (60 records)
    got = [LINE.match(line) for line in progress]
    assert all(got), progress
    pct = [int(m.group(1)) for m in got]
    assert pct == sorted(pct) and pct[-1] == 100
    assert int(got[-1].group(2)) == summary["docs_read"] == 60
    # each warning is a line of its own, between the progress lines of its chunk
    warnings = [i for i, line in enumerate(lines) if line.startswith("warning: ")]
    assert len(warnings) == 2 and lines.index(progress[0]) < warnings[1] < lines.index(progress[-1])
    assert lines[-2].startswith("done: 60 records read, 58 documents written, 2 skipped")


def test_quiet_and_short_jobs_print_no_progress(tmp_path, tokenizer_model, capsys, monkeypatch):
    monkeypatch.setattr(bars, "LOG_INTERVAL", 0.0)
    _preprocess(tmp_path, tokenizer_model, "--quiet")
    quiet = capsys.readouterr().err
    monkeypatch.setattr(bars, "LOG_INTERVAL", 86400.0)
    _preprocess(tmp_path, tokenizer_model)
    short = capsys.readouterr().err
    for err in (quiet, short):
        assert "tokenizing" not in err and "\r" not in err
        assert err.count("warning: ") == 2 and "done: 60 records read" in err


def test_terminal_gets_a_tqdm_bar_and_messages_above_it(tmp_path, tokenizer_model, monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    _preprocess(tmp_path, tokenizer_model)
    out = term.getvalue()
    # tqdm draws the bar at 0% and redraws it in place (\r) up to 100%, then ends the line
    assert out.startswith("\rtokenizing:   0%|") and re.search(r"\rtokenizing: 100%\|#+\|[^\r]*\n", out)
    # tqdm.write lifts the bar before a message: every message starts at the left edge of its line
    rows = [row.split("\r")[-1] for row in out.split("\n")]
    messages = [r for r in rows if "warning:" in r or "done:" in r]
    assert len(messages) == 3 and all(r.startswith(("warning: ", "done: ")) for r in messages), rows


def test_notebook_gets_tqdm_notebook_bar(monkeypatch):
    made = []

    class Notebook:  # stands in for tqdm.notebook.tqdm, which tqdm.autonotebook picks in Jupyter
        def __init__(self, **kw):
            made.append(kw)

    monkeypatch.setattr(bars, "_notebook_or_std", Notebook)
    assert isinstance(bars.progress_bar(10, "x", unit="tensor"), Notebook)
    assert made == [{"total": 10, "desc": "x", "unit": "tensor", "disable": False}]
    assert not isinstance(bars.progress_bar(10, "x", disable=True), Notebook)


@pytest.mark.skipif(not HAVE_HF, reason="conversion needs the [hf] extra")
def test_conversion_bars(tmp_path, tokenizer_model, capsys, monkeypatch):
    monkeypatch.setattr(bars, "LOG_INTERVAL", 0.0)
    ck, _ = _save_ours(tmp_path, "bars", VARIANTS["llama_gqa_tied"][0], tokenizer_model)
    s = export_to_hf(ck, str(tmp_path / "hf"))
    n = s["tensors"]
    m = import_from_hf(str(tmp_path / "hf"), str(tmp_path / "back"))["tensors"]  # ours: fused QKV, gate+up
    out, err = capsys.readouterr()
    assert "\r" not in err
    exported = [line for line in err.splitlines() if line.startswith("exporting:")]
    imported = [line for line in err.splitlines() if line.startswith("importing:")]
    assert exported[-1].startswith(f"exporting: 100% {n}/{n} [") and exported[-1].endswith(" MiB]")
    assert imported[-1].startswith(f"importing: 100% {m}/{m} [") and imported[-1].endswith(" MiB]")
    assert len(exported) > 1 and len(imported) > 1
    assert "wrote " in out and not re.search(r"\d+/\d+ tensors", out)  # the log keeps its summaries only
    export_to_hf(ck, str(tmp_path / "hf2"), progress=False)
    import_from_hf(str(tmp_path / "hf2"), str(tmp_path / "back2"), progress=False)
    assert "exporting:" not in capsys.readouterr().err
