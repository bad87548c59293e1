"""Thai-correct tokenizer training and the shipped model."""
import json

import pytest

from megatron_th.data import train_tokenizer as tt
from megatron_th.data.tokenizer import SentencePieceTokenizer, padded_vocab_size, strip_invisible

THAI = "น้ำตาลทรายแดง ทำให้ขนมมีสีสวย\nเด็ก ๆ ชอบกินมาก ๑๒๓ ๋"


def test_shipped_model_special_ids_and_round_trip(tokenizer_model, corpus_dir):
    tok = SentencePieceTokenizer(tokenizer_model)
    assert tok.vocab_size == 8000
    assert (tok.unk, tok.bos, tok.eod, tok.pad) == (0, 1, 2, 3)
    assert tok.id_to_piece(4) == "\n" and tok.encode("\n") == [4]
    text = THAI + "\nMixed English text, with  two spaces & symbols {}[]~"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.unk not in ids  # byte fallback: never <unk>
    # ำ (U+0E33) is kept whole: identity normalization, not NFKC
    assert any("\u0e33" in tok.id_to_piece(i) for i in tok.encode("น้ำ"))
    assert tok.encode("ก\u200bข") == tok.encode("กข")
    # the whole corpus round-trips exactly
    import glob
    for path in glob.glob(f"{corpus_dir}/*.jsonl"):
        for line in open(path, encoding="utf-8"):
            t = strip_invisible(json.loads(line)["text"])
            assert tok.decode(tok.encode(t)) == t, path


def test_padded_vocab_size_never_depends_on_tp():
    assert padded_vocab_size(8000, 128) == 8064
    assert padded_vocab_size(8064, 128) == 8064
    assert padded_vocab_size(1, 1) == 1
    with pytest.raises(ValueError, match="divisible-by"):
        padded_vocab_size(10, 0)


def test_train_with_thai_defaults(tmp_path, corpus_dir, capsys):
    out = tmp_path / "t.model"
    long_line = {"text": "ก" * 30000}  # 90,000 bytes: over a 65,536-byte limit
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps(long_line, ensure_ascii=False) + "\n" + '{"text": "\u200bซ่อน\u200b"}\n',
                     encoding="utf-8")
    rc = tt.main(["--input", f"{corpus_dir}/th_wiki.jsonl", f"{corpus_dir}/en_misc.jsonl", str(extra),
                  "--output", str(out), "--vocab-size", "1500", "--num-threads", "2"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "1 lines exceed --max-sentence-length 65536 bytes" in cap.err
    assert "round trip: exact" in cap.out
    assert "held-out thai" in cap.out and "held-out latin" in cap.out
    tok = SentencePieceTokenizer(out)
    assert tok.vocab_size == 1500 and tok.id_to_piece(4) == "\n"
    # required characters are in the vocab even if unseen: Thai digits, rare marks, ASCII
    for ch in "๙๋ฃ~^":
        assert tok.sp.piece_to_id(ch) != tok.unk, ch
    assert " " not in tt.THAI_CHARS + tt.ASCII_CHARS


def test_evaluate_reports_per_script(tokenizer_model):
    tok = SentencePieceTokenizer(tokenizer_model)
    stats = tt.evaluate(tok, ["ภาษาไทยง่ายนิดเดียว", "plain English words here"])
    assert stats["thai"]["docs"] == 1 and stats["latin"]["docs"] == 1
    assert stats["thai"]["tokens"] == len(tok.encode("ภาษาไทยง่ายนิดเดียว"))
    assert stats["roundtrip_failures"] == 0
    assert tt.script_of("abc ภาษา") == "thai" and tt.script_of("abcd ก") == "latin"
    assert tt.script_of("123") == "other"


def test_empty_input_is_an_error(tmp_path, capsys):
    p = tmp_path / "e.jsonl"
    p.write_text('{"text": ""}\n')
    assert tt.main(["--input", str(p), "--output", str(tmp_path / "m.model")]) == 1
    assert "no text to train on" in capsys.readouterr().err
