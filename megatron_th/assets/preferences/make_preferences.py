"""Writes the embedded Thai + English preference set: train.jsonl and heldout.jsonl beside this file.

Original text written for this project, released under CC0 1.0 (see ../LICENSE). Each record is
one preference pair in TRL's conversational format, ``{"id", "prompt": [messages], "chosen":
[assistant message], "rejected": [assistant message]}``; the prompt is a user question (sometimes
after a system message), in Thai or English. The chosen answer is right and in the language of the
question, in the voice of the chat set (../chat/make_chat.py, whose questions, answers and tables
this file reuses). The rejected answer is one of:

- ``lang``: the same right answer in the other language (a Thai question answered in English, or
  an English one in Thai);
- ``fact``: the right language with an invented fact: a wrong capital, wrong arithmetic, a wrong
  day, month or date, a wrong number or a wrong thing.

The id reads ``kind-language-rejection-number``. The output is a pure function of this file and
make_chat.py (fixed seed): ``python make_preferences.py`` rewrites the same bytes, and
tests/test_preprocess_dpo.py checks that it does. A question gets one pair, or a few of them one of
each; after a seeded shuffle of the questions every sixth goes with its pairs to heldout.jsonl,
the rest to train.jsonl, so no question of the held-out file is in the training file.
"""
import importlib.util
import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_chat():
    """../chat/make_chat.py as a module, without writing a __pycache__ among the packaged assets."""
    spec = importlib.util.spec_from_file_location("make_chat", os.path.join(HERE, "..", "chat", "make_chat.py"))
    module = importlib.util.module_from_spec(spec)
    keep, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = keep
    return module


chat = _load_chat()

# The greetings' answers (make_chat.GREETINGS) in both languages, for the wrong-language rejections
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

# Invented facts for make_chat.FACTS whose answer holds no number to change (or a date to keep)
WRONG_FACTS = {
    "Which planet is closest to the Sun?": ("Mars is the planet closest to the Sun.",
                                            "ดาวอังคารอยู่ใกล้ดวงอาทิตย์ที่สุดครับ"),
    "Which is the largest planet in the solar system?": ("Saturn is the largest planet in the solar system.",
                                                         "ดาวเสาร์ใหญ่ที่สุดในระบบสุริยะครับ"),
    "Which is the largest ocean?": ("The Atlantic Ocean is the largest ocean.", "มหาสมุทรแอตแลนติกใหญ่ที่สุดครับ"),
    "What is the currency of Thailand?": ("The currency of Thailand is the rupee.", "สกุลเงินของประเทศไทยคือรูปีครับ"),
    "When is Songkran?": ("Songkran, the Thai New Year festival, is held from 13 to 15 June.",
                          "สงกรานต์ หรือวันขึ้นปีใหม่ไทย ตรงกับวันที่ 13 ถึง 15 มิถุนายนครับ"),
    "What do bees make?": ("Bees make milk.", "ผึ้งผลิตนมครับ"),
    "In which direction does the Sun rise?": ("The Sun rises in the west.", "ดวงอาทิตย์ขึ้นทางทิศตะวันตกครับ"),
    "What is the chemical formula of water?": ("The chemical formula of water is CO2.", "สูตรเคมีของน้ำคือ CO2 ครับ"),
    "What colours are on the Thai flag?": ("The Thai flag is green, yellow and black.",
                                           "ธงชาติไทยมีสามสี คือ เขียว เหลือง และดำครับ"),
    "What gas do plants take in to make food?": ("Plants take in helium to make food.",
                                                 "พืชใช้แก๊สฮีเลียมในการสร้างอาหารครับ"),
}

MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def other_number(rng, n):
    """A wrong number near ``n`` (never ``n``, never negative)."""
    d = rng.choice([1, 2, 3, 4, 5, 10])
    return n + d if n < d or rng.random() < 0.5 else n - d


def renumber(text, old, new):
    """``text`` with its last ``old`` (a whole number) replaced by ``new``."""
    hits = [m for m in re.finditer(r"\d+", text) if m.group() == str(old)]
    m = hits[-1]
    return text[:m.start()] + str(new) + text[m.end():]


def month_days(i, lang, days=None):
    """(question, answer) about the days of month ``i`` (0-based); ``days`` overrides the count."""
    en, th = chat.MONTHS[i]
    n = MONTH_DAYS[i] if days is None else days
    if lang == "en":
        leap = ", or 29 in a leap year" if i == 1 and days is None else ""
        return f"How many days does {en} have?", f"{en} has {n} days{leap}."
    leap = " หรือ 29 วันในปีอธิกสุรทิน" if i == 1 and days is None else ""
    return f"เดือน{th}มีกี่วัน", f"เดือน{th}มี {n} วัน{leap}ครับ"


def questions(rng):
    """Every question as ``(kind, lang, question, right answer, the answer in the other language,
    an answer with an invented fact)``."""
    out = []
    by_answer = {en: th for en, th in GREETING_ANSWERS}
    by_answer.update({th: en for en, th in GREETING_ANSWERS})
    for lang, q, ans in chat.GREETINGS:
        out.append(("greet", lang, q, ans, by_answer[ans], None))
    for i, (c_en, cap_en, c_th, cap_th) in enumerate(chat.CAPITALS):
        _, wrong_en, _, wrong_th = chat.CAPITALS[(i + rng.randrange(1, len(chat.CAPITALS))) % len(chat.CAPITALS)]
        en = (f"What is the capital of {c_en}?", f"The capital of {c_en} is {cap_en}.",
              f"The capital of {c_en} is {wrong_en}.")
        th = (f"เมืองหลวงของประเทศ{c_th}คือเมืองอะไร", f"เมืองหลวงของประเทศ{c_th}คือ{cap_th}ครับ",
              f"เมืองหลวงของประเทศ{c_th}คือ{wrong_th}ครับ")
        out += [("capital", "en", en[0], en[1], th[1], en[2]), ("capital", "th", th[0], th[1], en[1], th[2])]
    for q_en, a_en, q_th, a_th in chat.FACTS:
        if q_en in WRONG_FACTS:
            wrong_en, wrong_th = WRONG_FACTS[q_en]
        else:
            n = int(re.findall(r"\d+", a_en)[-1])
            wrong = other_number(rng, n)
            wrong_en, wrong_th = renumber(a_en, n, wrong), renumber(a_th, n, wrong)
        out += [("fact", "en", q_en, a_en, a_th, wrong_en), ("fact", "th", q_th, a_th, a_en, wrong_th)]
    for i, (d_en, d_th) in enumerate(chat.DAYS):
        n_en, n_th = chat.DAYS[(i + 1) % 7]
        w_en, w_th = chat.DAYS[(i + rng.randint(2, 6)) % 7]
        out.append(("day", "en", f"What day comes after {d_en}?", f"{n_en} comes after {d_en}.",
                    f"วันถัดจาก{d_th}คือ{n_th}ครับ", f"{w_en} comes after {d_en}."))
        out.append(("day", "th", f"วันถัดจาก{d_th}คือวันอะไร", f"วันถัดจาก{d_th}คือ{n_th}ครับ",
                    f"{n_en} comes after {d_en}.", f"วันถัดจาก{d_th}คือ{w_th}ครับ"))
    for i, (m_en, m_th) in enumerate(chat.MONTHS):
        w_en, w_th = chat.MONTHS[(i + rng.randint(1, 11)) % 12]
        right_en, right_th = f"{m_en} is month number {i + 1} of the year.", f"เดือนที่ {i + 1} ของปีคือเดือน{m_th}ครับ"
        out.append(("month", "en", f"Which month is number {i + 1} of the year?", right_en, right_th,
                    f"{w_en} is month number {i + 1} of the year."))
        out.append(("month", "th", f"เดือนที่ {i + 1} ของปีคือเดือนอะไร", right_th, right_en,
                    f"เดือนที่ {i + 1} ของปีคือเดือน{w_th}ครับ"))
        wrong = {28: 30, 30: 31, 31: 30}[MONTH_DAYS[i]]
        for lang, other in (("en", "th"), ("th", "en")):
            q, ans = month_days(i, lang)
            out.append(("monthdays", lang, q, ans, month_days(i, other)[1], month_days(i, lang, wrong)[1]))
    for i in range(40):
        lang, op = ("en", "th")[i % 2], "+-*"[i // 2 % 3]
        state = rng.getstate()
        q, ans, z = chat.arithmetic(rng, lang, op)
        rng.setstate(state)
        _, other, _ = chat.arithmetic(rng, "th" if lang == "en" else "en", op)  # the same numbers
        out.append(("arith", lang, q, ans, other, renumber(ans, z, other_number(rng, z))))
    for en, th in rng.sample(chat.WORDS, 24):
        en_w, th_w = rng.choice([w for w in chat.WORDS if w[0] != en])
        out.append(("word", "en", f"How do you say '{en}' in Thai?", f"'{en}' in Thai is '{th}'.",
                    f"คำว่า '{en}' ในภาษาไทยคือ '{th}' ครับ", f"'{en}' in Thai is '{th_w}'."))
        out.append(("word", "th", f"คำว่า '{th}' ภาษาอังกฤษคืออะไร", f"คำว่า '{th}' ในภาษาอังกฤษคือ '{en}' ครับ",
                    f"'{th}' means '{en}'.", f"คำว่า '{th}' ในภาษาอังกฤษคือ '{en_w}' ครับ"))
    return out


def build():
    rng = random.Random(17)
    groups, seen = [], set()
    for n, (kind, lang, q, right, other_lang, wrong) in enumerate(questions(rng)):
        if q in seen:  # random picks can repeat a question: keep it once (and in one file)
            continue
        seen.add(q)
        prompt = [chat.u(q)]
        if rng.random() < 0.2:
            prompt.insert(0, {"role": "system", "content": chat.SYSTEM_EN if lang == "en" else chat.SYSTEM_TH})
        # one rejection a question, picked at random (greetings have no fact to get wrong), or both
        if wrong is None:
            whys = ["lang"]
        else:
            pick = rng.random()
            whys = ["lang"] if pick < 0.35 else ["fact"] if pick < 0.7 else ["lang", "fact"]
        groups.append([{"id": f"{kind}-{lang}-{why}-{n:03d}", "prompt": prompt, "chosen": [chat.a(right)],
                        "rejected": [chat.a(other_lang if why == "lang" else wrong)]} for why in whys])
    rng.shuffle(groups)
    heldout = [r for g in groups[::6] for r in g]
    return [r for i, g in enumerate(groups) if i % 6 for r in g], heldout


dumps = chat.dumps


def main():
    chat.write(HERE, *build(), "pairs")


if __name__ == "__main__":
    main()
