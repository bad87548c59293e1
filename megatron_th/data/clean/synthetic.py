"""A generated Thai+English web-like corpus with what cleaning must find, planted and labelled.

For the tests and ``benchmarks/clean_throughput.py``; original text (word lists in
``synthetic_words.py``, CC0-1.0), nothing downloaded. ``make_corpus(seed)`` returns ``Doc``s in
input order:

- ``clean_th`` / ``clean_en``: documents of several paragraphs that every quality rule should
  keep; some carry planted boilerplate lines (a site's navigation line on top, its footer lines at
  the bottom, "Posted by <author> in <category>" lines) and planted PII in a sentence;
- ``near_dup``: a copy of an earlier clean document with some sentences replaced, at a target
  Jaccard similarity (``jaccard`` is the similarity actually reached, ``text.jaccard``);
  ``exact_dup``: a copy differing only in whitespace;
- ``junk``: documents made to fail one rule, ``expect`` naming the ``stage/reason``.

``Doc.lines`` labels each line ``True`` when it is planted boilerplate; ``Doc.pii`` lists the PII
strings planted (``Doc.fake_ids``: 13-digit numbers with a wrong check digit, which must stay).
``write_jsonl`` spreads the records over files so that originals come first in input order.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field

from megatron_th.data.clean import synthetic_words as W
from megatron_th.data.clean.text import jaccard

NEAR_TARGETS = (0.97, 0.93, 0.9, 0.87, 0.85, 0.83, 0.81, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)


@dataclass
class Doc:
    text: str
    kind: str
    lines: list = field(default_factory=list)     # per line of text: planted boilerplate?
    pii: list = field(default_factory=list)       # planted PII strings
    fake_ids: list = field(default_factory=list)  # 13-digit numbers with a wrong check digit
    original: int | None = None                   # index of the document copied (dups)
    jaccard: float | None = None                  # similarity with it
    expect: str | None = None                     # junk: the removed_by expected


def thai_id(rng: random.Random, valid: bool = True) -> str:
    d = [rng.randint(1, 8)] + [rng.randint(0, 9) for _ in range(11)]
    check = (11 - sum(d[i] * (13 - i) for i in range(12)) % 11) % 10
    return "".join(map(str, d + [check if valid else (check + 1 + rng.randint(0, 8)) % 10]))


def _phone(rng: random.Random, form: int) -> str:
    a, b, c = rng.choice("689"), rng.randint(0, 9), rng.randint(100, 999)
    d = rng.randint(1000, 9999)
    return [f"0{a}{b}-{c}-{d}", f"0{a}{b}{c}{d}", f"0{a}{b} {c} {d}", f"+66 {a}{b} {c} {d}",
            f"+66{a}{b}{c}{d}", f"02-{c}-{d}", f"02 {c} {d}", f"0{a}-{rng.randint(1000, 9999)}-{d}"][form % 8]


def pii_sentence(rng: random.Random, i: int, thai: bool) -> tuple[str, list, list]:
    """A sentence holding PII of kind ``i % 4`` (phone, e-mail, ID, ID with dashes) and, every other
    time, a 13-digit reference number whose check digit is wrong."""
    kind = i % 4
    if kind == 0:
        pii = [_phone(rng, i // 4)]
    elif kind == 1:
        pii = [f"{rng.choice(W.NAMES)}{rng.randint(1, 99)}@{rng.choice(W.DOMAINS)}"]
    else:
        v = thai_id(rng)
        pii = [v if kind == 2 else f"{v[0]}-{v[1:5]}-{v[5:10]}-{v[10:12]}-{v[12]}"]
    fake = [thai_id(rng, valid=False)] if i % 2 else []
    if thai:
        s = f"ผู้สนใจสอบถามรายละเอียดได้ที่ {pii[0]} ตลอดวัน"
        s += f" โดยแจ้งเลขอ้างอิง {fake[0]} ทุกครั้ง" if fake else ""
    else:
        s = f"Anyone interested can get in touch at {pii[0]} during the day"
        s += f", quoting reference {fake[0]}." if fake else "."
    return s, pii, fake


def th_sentence(rng: random.Random) -> str:
    c = rng.choice
    forms = (
        lambda: (f"{c(W.TH_SUBJECTS)}{c(W.TH_TIMES)}ได้{c(W.TH_VERBS)}{c(W.TH_OBJECTS)}"
                 f"ที่{c(W.TH_PLACES)}{c(W.TH_PURPOSES)}"),
        lambda: f"{c(W.TH_SUBJECTS)}ใน{c(W.TH_PLACES)}กล่าวว่า{c(W.TH_COMMENTS)}",
        lambda: f"{c(W.TH_TIMES)}มี{c(W.TH_SUBJECTS)}มาร่วม{c(W.TH_VERBS)}{c(W.TH_OBJECTS)}และ{c(W.TH_OBJECTS)}",
        lambda: f"การ{c(W.TH_VERBS)}{c(W.TH_OBJECTS)}ของ{c(W.TH_SUBJECTS)}เป็นงานที่{c(W.TH_COMMENTS)}",
        lambda: f"{c(W.TH_OBJECTS)}จาก{c(W.TH_PLACES)}ถูกนำมา{c(W.TH_VERBS)}{c(W.TH_PURPOSES)}",
    )
    return c(forms)()


def en_sentence(rng: random.Random) -> str:
    c = rng.choice
    forms = (
        lambda: f"{c(W.EN_SUBJECTS)} {c(W.EN_VERBS)} {c(W.EN_OBJECTS)} {c(W.EN_PLACES)} {c(W.EN_PURPOSES)}.",
        lambda: f"{c(W.EN_PURPOSES)}, {c(W.EN_SUBJECTS)} {c(W.EN_VERBS)} {c(W.EN_OBJECTS)}.",
        lambda: f"{c(W.EN_SUBJECTS)} {c(W.EN_VERBS)} {c(W.EN_OBJECTS)} and {c(W.EN_OBJECTS)} {c(W.EN_PLACES)}.",
        lambda: c(W.EN_COMMENTS),
    )
    s = c(forms)()
    return s[0].upper() + s[1:]


def _paragraphs(rng: random.Random, thai: bool, n_par: int) -> list[list[str]]:
    make = th_sentence if thai else en_sentence
    return [[make(rng) for _ in range(rng.randint(3, 5))] for _ in range(n_par)]


def _render(title: str, paragraphs: list[list[str]]) -> list[str]:
    return [title] + [" ".join(p) for p in paragraphs]


def _with_boilerplate(rng: random.Random, body: list[str], thai: bool) -> tuple[list[str], list[bool]]:
    nav, footer = rng.choice(W.SITES)
    top, bottom = [nav], list(footer)
    if rng.random() < 0.5:
        author = rng.choice(W.AUTHORS)
        bottom.insert(0, f"โพสต์โดย {author} เมื่อ {rng.randint(1, 28)} มีนาคม 25{rng.randint(60, 67)}" if thai
                      else f"Posted by {author} in {rng.choice(W.CATEGORIES)}")
    lines = top + body + bottom
    return lines, [True] * len(top) + [False] * len(body) + [True] * len(bottom)


def clean_doc(rng: random.Random, thai: bool, i: int, boilerplate: bool, pii: bool) -> tuple[Doc, list]:
    paras = _paragraphs(rng, thai, rng.randint(3, 5))
    c = rng.choice
    title = (f"{c(W.TH_SUBJECTS)}{c(W.TH_VERBS)}{c(W.TH_OBJECTS)}ที่{c(W.TH_PLACES)}"
             if thai else f"How {rng.choice(W.EN_SUBJECTS)} {rng.choice(W.EN_VERBS)} {rng.choice(W.EN_OBJECTS)}")
    doc = Doc("", "clean_th" if thai else "clean_en")
    if pii:
        s, doc.pii, doc.fake_ids = pii_sentence(rng, i, thai)
        paras[-1].append(s)
    body = _render(title, paras)
    lines, labels = _with_boilerplate(rng, body, thai) if boilerplate else (body, [False] * len(body))
    doc.text, doc.lines = "\n".join(lines), labels
    return doc, paras


def near_duplicate(rng: random.Random, orig: Doc, paras: list, thai: bool, target: float) -> Doc:
    """The copy whose sentence replacements bring its Jaccard with ``orig`` closest to ``target``."""
    slots = [(p, s) for p, par in enumerate(paras) for s in range(len(par))]
    order = rng.sample(slots, len(slots))
    make = th_sentence if thai else en_sentence
    fresh = [make(rng) for _ in order]
    title = orig.text.split("\n")[0]
    best = None
    for m in range(1, len(order) + 1):
        new = [list(p) for p in paras]
        for (p, s), sent in zip(order[:m], fresh):
            new[p][s] = sent
        text = "\n".join(_render(title, new))
        j = jaccard(orig.text, text)
        if best is None or abs(j - target) < abs(best[1] - target):
            best = (text, j)
        if j < target:
            break
    text, j = best
    return Doc(text, "near_dup", lines=[False] * len(text.split("\n")), jaccard=j)


def junk_docs(rng: random.Random) -> list[Doc]:
    """Documents that each fail one rule (``expect``)."""
    th = lambda k: " ".join(th_sentence(rng) for _ in range(k))  # noqa: E731
    nav, footer = W.SITES[0]
    items = ["กระเป๋าผ้าฝ้าย", "รองเท้าแตะยาง", "หมวกสาน", "ผ้าขาวม้า", "ตะกร้าหวาย", "เสื่อกก", "พัดไม้ไผ่",
             "โคมไฟกระดาษ", "หมอนขิด", "ผ้าถุงมัดหมี่", "กระบุง", "ครกหิน", "ไม้กวาดดอกหญ้า", "ขันลงหิน"]
    prices = " ".join(f"{rng.choice(items)} {rng.randint(100, 9999)} บาท รหัส {rng.randint(10000, 99999)}"
                      for _ in range(20))
    spam = " ".join(["ลดราคาพิเศษ"] * 40 + [th(1)])
    stars = " ".join(f"{rng.choice(items)} ★★ !!" for _ in range(40))
    mixed = " ".join(f"{rng.choice(items)} {rng.choice(['Tote', 'Sale', 'Shop'])} ~*~*~*~*~*~*~*" for _ in range(20))
    traits = ["สีแดง", "สีเขียว", "ขนาดใหญ่", "ราคาถูก", "คุณภาพดี", "ส่งเร็ว"]
    no_stop = " ".join(rng.choice(items) + rng.choice(traits) for _ in range(60))
    dup_line = th(3)
    short_lines = "\n".join(f"{a}{b}" for a in items[:10] for b in ("สีแดง", "สีฟ้า", "ลายดอก", "ไซซ์ใหญ่"))
    en_list = "\n".join(f"{o.capitalize()}." for o in rng.sample(W.EN_OBJECTS, 30))
    en_nopunct = "\n".join(f"{rng.choice(W.EN_SUBJECTS)} {rng.choice(W.EN_VERBS)} {rng.choice(W.EN_OBJECTS)}"
                           f" {rng.choice(W.EN_PLACES)} {rng.choice(W.EN_PURPOSES)}" for _ in range(8))
    return [
        Doc("今天我们在公园里散步，看见很多人在跳舞和打太极拳。天气很好，大家都很开心。" * 4, "junk",
            expect="script_language/no_majority_script"),
        Doc("\n".join([nav, *footer]), "junk", expect="boilerplate/no_text_left"),
        Doc("ขายรถกระบะมือสองสภาพดีมาก ใช้งานน้อย ติดต่อเจ้าของโดยตรง", "junk", expect="thai_quality/too_short"),
        Doc(mixed, "junk", expect="thai_quality/thai_ratio"),
        Doc(prices, "junk", expect="thai_quality/digit_ratio"),
        Doc(stars, "junk", expect="thai_quality/symbol_ratio"),
        Doc("\n".join([dup_line] * 6 + [th(3), th(3)]), "junk", expect="gopher_repetition_th/dup_line_frac"),
        Doc(spam, "junk", expect="gopher_repetition_th/top_2_gram"),
        Doc(short_lines, "junk", expect="fineweb_quality_th/list_ratio"),
        Doc(no_stop, "junk", expect="gopher_quality_th/gopher_enough_stop_words"),
        Doc(en_list, "junk", expect="fineweb_quality_en/short_line_ratio"),
        Doc(en_nopunct, "junk", expect="fineweb_quality_en/line_punct_ratio"),
        Doc(" ".join(["Cheap flights to Bangkok today."] * 12), "junk", expect="gopher_repetition_en/top_2_gram"),
        Doc("The market opened early on Saturday and vendors sold mangoes, sticky rice and grilled fish to the "
            "first customers. By noon most stalls were empty, so the sellers packed up, counted their money and "
            "went home before the afternoon storm.", "junk", expect="gopher_quality_en/gopher_short_doc"),
    ]


def make_corpus(seed: int = 0, n_th: int = 60, n_en: int = 20, near_th: int = 28, near_en: int = 8,
                exact: int = 4, junk: bool = True) -> list[Doc]:
    """The corpus in input order: clean documents, then copies and junk shuffled together."""
    rng = random.Random(seed)
    docs, paras = [], []
    for i in range(n_th + n_en):
        thai = i < n_th
        doc, p = clean_doc(rng, thai, i, boilerplate=rng.random() < 0.6, pii=rng.random() < 0.35)
        docs.append(doc)
        paras.append(p)
    later = []
    plain = [i for i, d in enumerate(docs) if not any(d.lines)]  # copies are made of documents without boilerplate
    th_plain, en_plain = [i for i in plain if i < n_th], [i for i in plain if i >= n_th]
    for k in range(near_th + near_en):
        pool = th_plain if k < near_th else en_plain
        i = pool[k % len(pool)] if k < near_th else pool[(k - near_th) % len(pool)]
        d = near_duplicate(rng, docs[i], paras[i], i < n_th, NEAR_TARGETS[k % len(NEAR_TARGETS)])
        d.original = i
        d.pii = [x for x in docs[i].pii if x in d.text]
        d.fake_ids = [x for x in docs[i].fake_ids if x in d.text]
        later.append(d)
    for k in range(exact):
        i = plain[(3 * k) % len(plain)]
        later.append(Doc("  " + docs[i].text.replace(" ", "  ", 2) + "\n", "exact_dup",
                         lines=[False] * (len(docs[i].lines) + 1), original=i, jaccard=1.0))
    if junk:
        later.extend(junk_docs(rng))
    rng.shuffle(later)
    return docs + later


def write_jsonl(docs: list[Doc], folder: str, files: int = 8, extra_lines: list[str] = ()) -> list[str]:
    """Writes ``docs`` (with ``id`` and a ``url`` field each) over ``files`` jsonl files named so that
    sorting gives input order; ``extra_lines`` (raw lines, e.g. malformed records) go at the end of
    the last file. Returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"crawl-{f:03d}.jsonl") for f in range(files)]
    handles = [open(p, "w", encoding="utf-8") for p in paths]
    try:
        for i, d in enumerate(docs):
            rec = {"id": f"doc-{i:04d}", "url": f"https://site{i % 7}.example/{i}", "text": d.text}
            handles[i * files // len(docs)].write(json.dumps(rec, ensure_ascii=False) + "\n")
        for line in extra_lines:
            handles[-1].write(line + "\n")
    finally:
        for h in handles:
            h.close()
    return paths
