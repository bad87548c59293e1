"""Writes the embedded Thai + English preference set: train.jsonl and heldout.jsonl beside this file.

Original text written for this project, released under CC0 1.0 (see ../LICENSE). Each record is
one preference pair in TRL's conversational format, ``{"id", "prompt": [messages], "chosen":
[assistant message], "rejected": [assistant message]}``; the prompt is a user turn in Thai or
English (for ``lang`` pairs sometimes after a system message), and the chosen answer is right
and in the prompt's language, in the voice of the chat set (../chat/make_chat.py). Two kinds:

- ``lang``: a question of the chat set (make_chat.py's greetings, capitals, facts, days, months,
  sums and words), and as the rejected answer the same right answer in the other language (a Thai
  question answered in English, or an English one in Thai);
- ``fact`` (grounding): a short passage written here (a shop, a timetable, a pet, an event) with a
  name, a number, a date, a time or a place in it, and a question about one of them. The chosen
  answer takes the value from the passage and stops; the rejected one is the same answer followed
  by a claim the passage does not support (CLAIMS in grounding_frames.py: a name, place, year,
  date, time, animal or colour that the prompt does not contain), an extrinsic hallucination in
  the sense of Maynez et al. 2020, "On Faithfulness and Factuality in Abstractive Summarization".

The id reads ``kind-language-rejection-number``. The output is a pure function of this file and
make_chat.py (fixed seeds): ``python make_preferences.py`` rewrites the same bytes, and
tests/test_preprocess_dpo.py checks that it does. Held-out pairs are new to training:

- ``lang``: after a seeded shuffle of the chat questions every sixth goes to heldout.jsonl;
- ``fact``: held-out passages use their own passage and question frames (FRAMES["heldout"] in
  grounding_frames.py, the data this file reads), their own unsupported claims (CLAIMS["heldout"])
  and their own values: names, places, fruits, animals, colours, months and whole numbers are split
  between the two files (POOLS, ``number_side``), so no held-out passage, question or claim is a
  training one and no held-out value, right or invented, occurs in a training passage.
  ``grounded(split)`` returns each pair with its passage, question, value and the claim's values,
  for the test.
"""
import importlib.util
import os
import random
import re
import string
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name, *path):
    """The file at ``path`` (relative to this folder) as module ``name``, without writing a
    __pycache__ among the packaged assets."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, *path))
    module = importlib.util.module_from_spec(spec)
    keep, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = keep
    return module


chat = _load("make_chat", "..", "chat", "make_chat.py")

# ------------------------------------------------------------------ wrong-language pairs
# The greetings' answers (make_chat.GREETINGS) in both languages
GREETING_ANSWERS = [
    ("Hello! How can I help you today?", "สวัสดีครับ มีอะไรให้ช่วยไหมครับ"),
    ("Good morning! How can I help you?", "อรุณสวัสดิ์ครับ มีอะไรให้ช่วยไหมครับ"),
    ("I'm fine, thank you. How can I help you?", "สบายดีครับ ขอบคุณที่ถาม มีอะไรให้ช่วยไหมครับ"),
    ("You're welcome!", "ยินดีครับ"),
    ("Goodbye! Have a nice day.", "ลาก่อนครับ ขอให้เป็นวันที่ดีครับ"),
    ("I am a small assistant that answers simple questions in Thai and English.",
     "ผมเป็นผู้ช่วยตัวเล็ก ๆ ที่ตอบคำถามง่าย ๆ ได้ทั้งภาษาไทยและภาษาอังกฤษครับ"),
    ("Yes, I can answer simple questions in Thai and in English.",
     "ได้ครับ ผมตอบคำถามง่าย ๆ ได้ทั้งภาษาไทยและภาษาอังกฤษครับ"),
]
MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def month_days(i, lang):
    """(question, answer) about the days of month ``i`` (0-based)."""
    en, th = chat.MONTHS[i]
    if lang == "en":
        leap = ", or 29 in a leap year" if i == 1 else ""
        return f"How many days does {en} have?", f"{en} has {MONTH_DAYS[i]} days{leap}."
    leap = " หรือ 29 วันในปีอธิกสุรทิน" if i == 1 else ""
    return f"เดือน{th}มีกี่วัน", f"เดือน{th}มี {MONTH_DAYS[i]} วัน{leap}ครับ"


def questions(rng):
    """Every chat-set question as ``(kind, lang, question, right answer, the answer in the other language)``."""
    out = []
    by_answer = {en: th for en, th in GREETING_ANSWERS}
    by_answer.update({th: en for en, th in GREETING_ANSWERS})
    for lang, q, ans in chat.GREETINGS:
        out.append(("greet", lang, q, ans, by_answer[ans]))
    for c_en, cap_en, c_th, cap_th in chat.CAPITALS:
        en = f"What is the capital of {c_en}?", f"The capital of {c_en} is {cap_en}."
        th = f"เมืองหลวงของประเทศ{c_th}คือเมืองอะไร", f"เมืองหลวงของประเทศ{c_th}คือ{cap_th}ครับ"
        out += [("capital", "en", *en, th[1]), ("capital", "th", *th, en[1])]
    for q_en, a_en, q_th, a_th in chat.FACTS:
        out += [("fact", "en", q_en, a_en, a_th), ("fact", "th", q_th, a_th, a_en)]
    for i, (d_en, d_th) in enumerate(chat.DAYS):
        n_en, n_th = chat.DAYS[(i + 1) % 7]
        en = f"What day comes after {d_en}?", f"{n_en} comes after {d_en}."
        th = f"วันถัดจาก{d_th}คือวันอะไร", f"วันถัดจาก{d_th}คือ{n_th}ครับ"
        out += [("day", "en", *en, th[1]), ("day", "th", *th, en[1])]
    for i, (m_en, m_th) in enumerate(chat.MONTHS):
        en = f"Which month is number {i + 1} of the year?", f"{m_en} is month number {i + 1} of the year."
        th = f"เดือนที่ {i + 1} ของปีคือเดือนอะไร", f"เดือนที่ {i + 1} ของปีคือเดือน{m_th}ครับ"
        out += [("month", "en", *en, th[1]), ("month", "th", *th, en[1])]
        (q_en, a_en), (q_th, a_th) = month_days(i, "en"), month_days(i, "th")
        out += [("monthdays", "en", q_en, a_en, a_th), ("monthdays", "th", q_th, a_th, a_en)]
    for i in range(40):
        lang, op = ("en", "th")[i % 2], "+-*"[i // 2 % 3]
        state = rng.getstate()
        q, ans, _ = chat.arithmetic(rng, lang, op)
        rng.setstate(state)
        _, other, _ = chat.arithmetic(rng, "th" if lang == "en" else "en", op)  # the same numbers
        out.append(("arith", lang, q, ans, other))
    for en, th in rng.sample(chat.WORDS, 24):
        out.append(("word", "en", f"How do you say '{en}' in Thai?", f"'{en}' in Thai is '{th}'.",
                    f"คำว่า '{en}' ในภาษาไทยคือ '{th}' ครับ"))
        out.append(("word", "th", f"คำว่า '{th}' ภาษาอังกฤษคืออะไร", f"คำว่า '{th}' ในภาษาอังกฤษคือ '{en}' ครับ",
                    f"'{th}' means '{en}'."))
    return out


def language_pairs(rng):
    """(train, heldout) wrong-language pairs: about two questions in three get one; every sixth
    question (after a shuffle) is held out."""
    records, seen = [], set()
    for n, (kind, lang, q, right, other) in enumerate(questions(rng)):
        if q in seen or rng.random() >= 0.65:  # random picks can repeat a question: keep it once
            continue
        seen.add(q)
        prompt = [chat.u(q)]
        if rng.random() < 0.2:
            prompt.insert(0, {"role": "system", "content": chat.SYSTEM_EN if lang == "en" else chat.SYSTEM_TH})
        records.append({"id": f"{kind}-{lang}-lang-{n:03d}", "prompt": prompt, "chosen": [chat.a(right)],
                        "rejected": [chat.a(other)]})
    rng.shuffle(records)
    return [r for i, r in enumerate(records) if i % 6], records[::6]


# ------------------------------------------------------------------ grounding pairs
frames = _load("grounding_frames", "grounding_frames.py")
POOLS = dict(frames.POOLS, month={split: [chat.MONTHS[i] for i in idx] for split, idx in frames.MONTH_SPLIT.items()})
NUMBERS, MINUTES, FRAMES = frames.NUMBERS, frames.MINUTES, frames.FRAMES
PER_FRAME, WRAPPERS, CLAIMS = frames.PER_FRAME, frames.WRAPPERS, frames.CLAIMS


def number_side(n):
    """Which file a whole number belongs to ("train" or "heldout"): a fixed pseudo-random split,
    about one number in three held out; the minutes of times (0, 15, 30, 45) are training numbers, so
    that no held-out number occurs in a training time."""
    return "heldout" if n in HELDOUT_NUMBERS else "train"


HELDOUT_NUMBERS = frozenset(n for n in range(max(hi for _, hi in NUMBERS.values()) + 1)
                            if n not in map(int, MINUTES) and random.Random(f"number-{n}").random() < 1 / 3)
NUMBERS_OF = {split: [n for n in range(max(hi for _, hi in NUMBERS.values()) + 1) if number_side(n) == split]
              for split in ("train", "heldout")}


def _number(rng, split, lo, hi, step=1):
    """A whole number of ``split`` in [lo, hi], a multiple of ``step`` from ``lo``."""
    return rng.choice([n for n in NUMBERS_OF[split] if lo <= n <= hi and (n - lo) % step == 0])


def _value(rng, split, slot, lang, ranges):
    """One value of ``slot`` as it is written in ``lang``, from ``split``'s pools."""
    k = 0 if lang == "en" else 1
    base = slot.rstrip("2")  # place2: another place
    if base in POOLS:
        return rng.choice(POOLS[base][split])[k]
    if slot == "date":
        return f"{_number(rng, split, *NUMBERS['day'])} {rng.choice(POOLS['month'][split])[k]}"
    if slot == "time":
        return f"{_number(rng, split, *NUMBERS['hour'])}{':' if lang == 'en' else '.'}{rng.choice(MINUTES)}"
    if slot == "price":
        return str(_number(rng, split, *NUMBERS["price"], step=5))
    if slot == "n":
        return str(_number(rng, split, *ranges["n"]))
    return str(_number(rng, split, *NUMBERS[slot]))


def occurs(value, text):
    """Whether ``value`` is written in ``text``: a number as a whole number (4 is not in 14), a Thai
    word not followed by a vowel or tone mark written above or below it (หมู, pig, is not in หมู่,
    group: U+0E31, U+0E34-U+0E3A and U+0E47-U+0E4E combine with the consonant before them)."""
    return re.search(r"(?<!\d)" + re.escape(value) + r"(?![\d\u0e31\u0e34-\u0e3a\u0e47-\u0e4e])", text) is not None


def _fields(template):
    """The slot names of a frame's template, in order."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def _claim(rng, split, lang, ranges, prompt):
    """An unsupported claim of ``split`` in ``lang`` and its values: one of CLAIMS[split][lang]
    with each slot a distinct value that ``prompt`` does not contain (``occurs``)."""
    template = rng.choice(CLAIMS[split][lang])
    values = {}
    for slot in _fields(template):
        for _ in range(1000):
            value = _value(rng, split, slot, lang, ranges)
            if not occurs(value, prompt) and value not in values.values():
                break
        else:
            raise RuntimeError(f"no value to invent for {slot} in {prompt!r}")
        values[slot] = value
    return template.format(**values), list(values.values())


def grounded(split):
    """The grounding pairs of ``split`` as ``(record, passage, question, value, invented)``: for each
    frame of FRAMES[split] and each language PER_FRAME[split] passages with their own values, each
    asked one of its questions; the chosen answer holds the asked value, the rejected one adds an
    unsupported claim (``_claim``) whose values (``invented``, a list) the prompt does not contain."""
    rng = random.Random(f"grounded-{split}")
    out = []
    for kind, ranges, p_en, p_th, asks in FRAMES[split]:
        for lang in ("en", "th"):
            passage_t = p_en if lang == "en" else p_th
            for _ in range(PER_FRAME[split]):
                values = {}
                for slot in _fields(passage_t):  # distinct values (place and place2 differ)
                    value = _value(rng, split, slot, lang, ranges)
                    while value in values.values():
                        value = _value(rng, split, slot, lang, ranges)
                    values[slot] = value
                slot, q_en, a_en, q_th, a_th = rng.choice(asks)
                q_t, a_t = (q_en, a_en) if lang == "en" else (q_th, a_th)
                passage, question = passage_t.format(**values), q_t.format(**values)
                content = rng.choice(WRAPPERS[lang]).format(p=passage, q=question)
                answer = a_t.format(**values)
                claim, invented = _claim(rng, split, lang, ranges, content)
                record = {"id": f"{kind}-{lang}-fact-{len(out):03d}", "prompt": [chat.u(content)],
                          "chosen": [chat.a(answer)], "rejected": [chat.a(f"{answer} {claim}")]}
                out.append((record, passage, question, values[slot], invented))
    return out


def build():
    """(train, heldout) records: the wrong-language and grounding pairs of each file, shuffled together."""
    lang_train, lang_heldout = language_pairs(random.Random(17))
    rng = random.Random(18)
    files = []
    for split, lang_pairs in (("train", lang_train), ("heldout", lang_heldout)):
        records = lang_pairs + [g[0] for g in grounded(split)]
        rng.shuffle(records)
        files.append(records)
    return tuple(files)


dumps = chat.dumps


def main():
    chat.write(HERE, *build(), "pairs")


if __name__ == "__main__":
    main()
