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
  answer takes the value from the passage; the rejected one is the same answer with an invented
  value of the same kind that the prompt does not contain (hallucination against grounding).

The id reads ``kind-language-rejection-number``. The output is a pure function of this file and
make_chat.py (fixed seeds): ``python make_preferences.py`` rewrites the same bytes, and
tests/test_preprocess_dpo.py checks that it does. Held-out pairs are new to training:

- ``lang``: after a seeded shuffle of the chat questions every sixth goes to heldout.jsonl;
- ``fact``: held-out passages use their own passage and question frames (FRAMES["heldout"]) and
  their own values: names, places, fruits, animals, colours, months and whole numbers are split
  between the two files (POOLS, ``number_side``), so no held-out passage or question is a training
  one and no held-out value, right or invented, occurs in a training passage. ``grounded(split)``
  returns each pair with its passage, question, value and invented value, for the test.
"""
import importlib.util
import os
import random
import re
import string
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
# (English, Thai) values; each pool is split into values for training and held-out values
POOLS = {
    "name": {"train": [("Somchai", "สมชาย"), ("Malee", "มาลี"), ("Anan", "อนันต์"), ("Pim", "พิมพ์"),
                       ("Kittisak", "กิตติศักดิ์"), ("Wichai", "วิชัย"), ("Suda", "สุดา"), ("Preecha", "ปรีชา"),
                       ("Boonmee", "บุญมี"), ("Rattana", "รัตนา"), ("Kanya", "กัญญา"), ("Sombat", "สมบัติ"),
                       ("Niran", "นิรันดร์"), ("Chaiwat", "ชัยวัฒน์"), ("Anna", "แอนนา"), ("Tom", "ทอม"),
                       ("Lucy", "ลูซี่"), ("Peter", "ปีเตอร์"), ("Maria", "มาเรีย"), ("David", "เดวิด")],
             "heldout": [("Jirayu", "จิรายุ"), ("Nattaya", "ณัฐยา"), ("Porntip", "พรทิพย์"), ("Surasak", "สุรศักดิ์"),
                         ("Manee", "มานี"), ("Wanida", "วนิดา"), ("Thanawat", "ธนวัฒน์"), ("Orawan", "อรวรรณ"),
                         ("Emma", "เอ็มมา"), ("James", "เจมส์"), ("Sarah", "ซาราห์"), ("Kenji", "เคนจิ")]},
    "place": {"train": [("Chiang Mai", "เชียงใหม่"), ("Khon Kaen", "ขอนแก่น"), ("Phuket", "ภูเก็ต"),
                        ("Hat Yai", "หาดใหญ่"), ("Udon Thani", "อุดรธานี"), ("Lampang", "ลำปาง"), ("Nan", "น่าน"),
                        ("Trang", "ตรัง"), ("Rayong", "ระยอง"), ("Krabi", "กระบี่"), ("Sukhothai", "สุโขทัย"),
                        ("Chanthaburi", "จันทบุรี"), ("Korat", "โคราช"), ("Ayutthaya", "อยุธยา")],
              "heldout": [("Phitsanulok", "พิษณุโลก"), ("Surin", "สุรินทร์"), ("Chumphon", "ชุมพร"),
                          ("Yasothon", "ยโสธร"), ("Satun", "สตูล"), ("Nakhon Phanom", "นครพนม"),
                          ("Phayao", "พะเยา"), ("Ranong", "ระนอง")]},
    "fruit": {"train": [("mangoes", "มะม่วง"), ("bananas", "กล้วย"), ("papayas", "มะละกอ"),
                        ("pineapples", "สับปะรด"), ("durians", "ทุเรียน"), ("mangosteens", "มังคุด"),
                        ("coconuts", "มะพร้าว"), ("watermelons", "แตงโม"), ("oranges", "ส้ม"), ("guavas", "ฝรั่ง")],
              "heldout": [("rambutans", "เงาะ"), ("longans", "ลำไย"), ("lychees", "ลิ้นจี่"),
                          ("jackfruits", "ขนุน"), ("tamarinds", "มะขาม"), ("sapodillas", "ละมุด")]},
    "animal": {"train": [("cat", "แมว"), ("dog", "สุนัข"), ("rabbit", "กระต่าย"), ("parrot", "นกแก้ว"),
                         ("turtle", "เต่า")],
               "heldout": [("goat", "แพะ"), ("duck", "เป็ด"), ("pig", "หมู"), ("horse", "ม้า")]},
    "colour": {"train": [("white", "ขาว"), ("black", "ดำ"), ("brown", "น้ำตาล"), ("grey", "เทา"), ("red", "แดง")],
               "heldout": [("yellow", "เหลือง"), ("golden", "ทอง"), ("cream", "ครีม")]},
    "month": {"train": [chat.MONTHS[i] for i in (0, 1, 2, 4, 5, 7, 9, 11)],
              "heldout": [chat.MONTHS[i] for i in (3, 6, 8, 10)]},
}
# whole-number slots: inclusive ranges (a time is an hour from "hour" and a minute from MINUTES)
NUMBERS = {"year": (1960, 2023), "day": (1, 28), "price": (20, 480), "room": (101, 499), "hour": (6, 21)}
MINUTES = ("00", "15", "30", "45")

# Passage frames: (kind, passage EN, passage TH, [(asked slot, question EN, answer EN, question TH,
# answer TH)]). A slot "n" takes a whole number in the frame's range; "date" is "{day} {month}",
# "time" is "{hour}:{minute}" in English and "{hour}.{minute}" in Thai (read "... น.").
FRAMES = {
    "train": [
        ("bakery", {},
         "{name} opened a small bakery in {place} in {year}.",
         "{name}เปิดร้านเบเกอรี่เล็ก ๆ ที่{place}เมื่อปี {year}",
         [("year", "In which year did {name} open the bakery?", "{name} opened the bakery in {year}.",
           "{name}เปิดร้านเบเกอรี่เมื่อปีไหน", "{name}เปิดร้านเบเกอรี่เมื่อปี {year} ครับ"),
          ("place", "Where is {name}'s bakery?", "{name}'s bakery is in {place}.",
           "ร้านเบเกอรี่ของ{name}อยู่ที่ไหน", "ร้านเบเกอรี่ของ{name}อยู่ที่{place}ครับ"),
          ("name", "Who opened a bakery in {place}?", "{name} opened a bakery in {place}.",
           "ใครเปิดร้านเบเกอรี่ที่{place}", "{name}เปิดร้านเบเกอรี่ที่{place}ครับ")]),
        ("museum", {"n": (12, 60)},
         "On {date}, {n} students from our school visited a museum in {place}.",
         "เมื่อวันที่ {date} นักเรียน {n} คนจากโรงเรียนของเราไปชมพิพิธภัณฑ์ที่{place}",
         [("n", "How many students visited the museum?", "{n} students visited the museum.",
           "นักเรียนไปชมพิพิธภัณฑ์กี่คน", "นักเรียนไปชมพิพิธภัณฑ์ {n} คนครับ"),
          ("place", "In which town was the museum?", "The museum was in {place}.",
           "พิพิธภัณฑ์อยู่ที่เมืองไหน", "พิพิธภัณฑ์อยู่ที่{place}ครับ"),
          ("date", "When did the students visit the museum?", "They visited the museum on {date}.",
           "นักเรียนไปชมพิพิธภัณฑ์วันที่เท่าไร", "นักเรียนไปชมพิพิธภัณฑ์เมื่อวันที่ {date}ครับ")]),
        ("market", {},
         "At the market, {name} sells {fruit} for {price} baht a kilo.",
         "ที่ตลาด {name}ขาย{fruit}กิโลกรัมละ {price} บาท",
         [("price", "How much does {name} sell {fruit} for?", "{name} sells {fruit} for {price} baht a kilo.",
           "{name}ขาย{fruit}กิโลกรัมละเท่าไร", "{name}ขาย{fruit}กิโลกรัมละ {price} บาทครับ"),
          ("fruit", "What does {name} sell at the market?", "{name} sells {fruit} at the market.",
           "{name}ขายอะไรที่ตลาด", "{name}ขาย{fruit}ที่ตลาดครับ"),
          ("name", "Who sells {fruit} at the market?", "{name} sells {fruit} at the market.",
           "ใครขาย{fruit}ที่ตลาด", "{name}ขาย{fruit}ที่ตลาดครับ")]),
        ("football", {},
         "The village football match will be held on {date} at the sports ground in {place}.",
         "การแข่งขันฟุตบอลของหมู่บ้านจะจัดขึ้นในวันที่ {date} ที่สนามกีฬา{place}",
         [("date", "When is the football match?", "The football match is on {date}.",
           "การแข่งขันฟุตบอลจัดขึ้นวันที่เท่าไร", "การแข่งขันฟุตบอลจัดขึ้นในวันที่ {date}ครับ"),
          ("place", "Where is the football match?", "The football match is at the sports ground in {place}.",
           "การแข่งขันฟุตบอลจัดขึ้นที่ไหน", "การแข่งขันฟุตบอลจัดขึ้นที่สนามกีฬา{place}ครับ")]),
        ("railway", {"n": (1, 12)},
         "The train to {place} leaves at {time} from platform {n}.",
         "รถไฟไป{place}ออกเวลา {time} น. ที่ชานชาลา {n}",
         [("time", "What time does the train to {place} leave?", "The train to {place} leaves at {time}.",
           "รถไฟไป{place}ออกกี่โมง", "รถไฟไป{place}ออกเวลา {time} น. ครับ"),
          ("n", "Which platform does the train to {place} leave from?",
           "The train to {place} leaves from platform {n}.",
           "รถไฟไป{place}ออกจากชานชาลาไหน", "รถไฟไป{place}ออกจากชานชาลา {n} ครับ"),
          ("place", "Where does the train at {time} go?", "The train at {time} goes to {place}.",
           "รถไฟเวลา {time} น. ไปที่ไหน", "รถไฟเวลา {time} น. ไป{place}ครับ")]),
        ("pet", {"n": (1, 15)},
         "{name} has a {colour} {animal} that is {n} years old.",
         "{name}มี{animal}สี{colour}อายุ {n} ปี",
         [("n", "How old is {name}'s {animal}?", "{name}'s {animal} is {n} years old.",
           "{animal}ของ{name}อายุกี่ปี", "{animal}ของ{name}อายุ {n} ปีครับ"),
          ("colour", "What colour is {name}'s {animal}?", "{name}'s {animal} is {colour}.",
           "{animal}ของ{name}สีอะไร", "{animal}ของ{name}สี{colour}ครับ"),
          ("animal", "What pet does {name} have?", "{name} has a {colour} {animal}.",
           "{name}เลี้ยงสัตว์อะไร", "{name}เลี้ยง{animal}สี{colour}ครับ")]),
        ("library", {"n": (2, 9)},
         "{name} borrowed {n} books from the library and must return them by {date}.",
         "{name}ยืมหนังสือจากห้องสมุด {n} เล่ม และต้องคืนภายในวันที่ {date}",
         [("n", "How many books did {name} borrow?", "{name} borrowed {n} books.",
           "{name}ยืมหนังสือกี่เล่ม", "{name}ยืมหนังสือ {n} เล่มครับ"),
          ("date", "By when must {name} return the books?", "{name} must return the books by {date}.",
           "{name}ต้องคืนหนังสือภายในวันไหน", "{name}ต้องคืนหนังสือภายในวันที่ {date}ครับ")]),
        ("weather", {"n": (24, 41)},
         "Yesterday the temperature in {place} reached {n} degrees Celsius.",
         "เมื่อวานนี้ที่{place}อุณหภูมิสูงถึง {n} องศาเซลเซียส",
         [("n", "How hot did it get in {place} yesterday?", "It reached {n} degrees Celsius in {place}.",
           "เมื่อวานนี้ที่{place}ร้อนแค่ไหน", "เมื่อวานนี้ที่{place}อุณหภูมิสูงถึง {n} องศาเซลเซียสครับ"),
          ("place", "Where did the temperature reach {n} degrees yesterday?",
           "The temperature reached {n} degrees in {place}.",
           "เมื่อวานนี้ที่ไหนอุณหภูมิสูงถึง {n} องศา", "เมื่อวานนี้อุณหภูมิที่{place}สูงถึง {n} องศาครับ")]),
        ("noodles", {"n": (4, 20)},
         "{name}'s noodle shop opens at {time} and has {n} tables.",
         "ร้านก๋วยเตี๋ยวของ{name}เปิดเวลา {time} น. และมีโต๊ะ {n} ตัว",
         [("time", "What time does {name}'s noodle shop open?", "{name}'s noodle shop opens at {time}.",
           "ร้านก๋วยเตี๋ยวของ{name}เปิดกี่โมง", "ร้านก๋วยเตี๋ยวของ{name}เปิดเวลา {time} น. ครับ"),
          ("n", "How many tables does {name}'s noodle shop have?", "{name}'s noodle shop has {n} tables.",
           "ร้านก๋วยเตี๋ยวของ{name}มีโต๊ะกี่ตัว", "ร้านก๋วยเตี๋ยวของ{name}มีโต๊ะ {n} ตัวครับ")]),
        ("hotel", {},
         "{name} is staying in room {room} of a hotel in {place}.",
         "{name}พักอยู่ห้อง {room} ของโรงแรมแห่งหนึ่งใน{place}",
         [("room", "Which room is {name} staying in?", "{name} is staying in room {room}.",
           "{name}พักอยู่ห้องอะไร", "{name}พักอยู่ห้อง {room} ครับ"),
          ("place", "In which town is {name}'s hotel?", "{name}'s hotel is in {place}.",
           "โรงแรมที่{name}พักอยู่ที่เมืองไหน", "โรงแรมที่{name}พักอยู่ใน{place}ครับ")]),
        ("birth", {},
         "{name} was born in {place} in {year}.",
         "{name}เกิดที่{place}เมื่อปี {year}",
         [("year", "In which year was {name} born?", "{name} was born in {year}.",
           "{name}เกิดปีไหน", "{name}เกิดเมื่อปี {year} ครับ"),
          ("place", "Where was {name} born?", "{name} was born in {place}.",
           "{name}เกิดที่ไหน", "{name}เกิดที่{place}ครับ")]),
        ("bus", {"n": (2, 12)},
         "The bus from {place} to {place2} costs {price} baht and takes {n} hours.",
         "รถบัสจาก{place}ไป{place2}ราคา {price} บาท และใช้เวลา {n} ชั่วโมง",
         [("price", "How much is the bus from {place} to {place2}?",
           "The bus from {place} to {place2} costs {price} baht.",
           "รถบัสจาก{place}ไป{place2}ราคาเท่าไร", "รถบัสจาก{place}ไป{place2}ราคา {price} บาทครับ"),
          ("n", "How long does the bus trip take?", "The bus trip takes {n} hours.",
           "รถบัสใช้เวลากี่ชั่วโมง", "รถบัสใช้เวลา {n} ชั่วโมงครับ")]),
    ],
    "heldout": [
        ("templefair", {"n": (3, 16)},
         "The temple fair in {place} starts on {date} and goes on for {n} days.",
         "งานวัดที่{place}เริ่มวันที่ {date} และจัดต่อเนื่อง {n} วัน",
         [("n", "For how many days does the temple fair go on?", "The temple fair goes on for {n} days.",
           "งานวัดจัดกี่วัน", "งานวัดจัดต่อเนื่อง {n} วันครับ"),
          ("date", "On what date does the temple fair start?", "The temple fair starts on {date}.",
           "งานวัดเริ่มวันที่เท่าไร", "งานวัดเริ่มวันที่ {date}ครับ"),
          ("place", "Where is the temple fair?", "The temple fair is in {place}.",
           "งานวัดจัดที่ไหน", "งานวัดจัดที่{place}ครับ")]),
        ("farm", {"n": (3, 40)},
         "{name} grows {fruit} on {n} rai of land near {place}.",
         "{name}ปลูก{fruit}บนที่ดิน {n} ไร่ ใกล้{place}",
         [("fruit", "What does {name} grow?", "{name} grows {fruit}.", "{name}ปลูกอะไร", "{name}ปลูก{fruit}ครับ"),
          ("n", "How much land does {name} farm?", "{name} farms {n} rai of land.",
           "ที่ดินของ{name}มีกี่ไร่", "ที่ดินของ{name}มี {n} ไร่ครับ"),
          ("place", "Near which town is {name}'s land?", "{name}'s land is near {place}.",
           "ที่ดินของ{name}อยู่ใกล้เมืองไหน", "ที่ดินของ{name}อยู่ใกล้{place}ครับ")]),
        ("lost", {},
         "Our {colour} {animal} has been missing since {date}. If you see it, please call {name}.",
         "{animal}สี{colour}ของเราหายไปตั้งแต่วันที่ {date} ถ้าพบเห็นกรุณาโทรหา{name}",
         [("name", "Whom should you call if you see the {animal}?", "You should call {name}.",
           "ถ้าพบ{animal}ควรโทรหาใคร", "ควรโทรหา{name}ครับ"),
          ("colour", "What colour is the missing {animal}?", "The missing {animal} is {colour}.",
           "{animal}ที่หายไปสีอะไร", "{animal}ที่หายไปสี{colour}ครับ"),
          ("date", "Since when has the {animal} been missing?", "The {animal} has been missing since {date}.",
           "{animal}หายไปตั้งแต่เมื่อไร", "{animal}หายไปตั้งแต่วันที่ {date}ครับ")]),
        ("flight", {"n": (1, 24)},
         "Passengers for the flight to {place} board at gate {n} at {time}.",
         "ผู้โดยสารเที่ยวบินไป{place}ขึ้นเครื่องที่ประตู {n} เวลา {time} น.",
         [("n", "At which gate do passengers for {place} board?", "Passengers for {place} board at gate {n}.",
           "ผู้โดยสารไป{place}ขึ้นเครื่องที่ประตูไหน", "ผู้โดยสารไป{place}ขึ้นเครื่องที่ประตู {n} ครับ"),
          ("time", "At what time does boarding for {place} begin?", "Boarding for {place} begins at {time}.",
           "ผู้โดยสารไป{place}ขึ้นเครื่องกี่โมง", "ผู้โดยสารไป{place}ขึ้นเครื่องเวลา {time} น. ครับ")]),
        ("teacher", {"n": (8, 45)},
         "{name} teaches {n} children at the village school in {place}.",
         "{name}สอนเด็ก {n} คนที่โรงเรียนประจำหมู่บ้านใน{place}",
         [("n", "How many children does {name} teach?", "{name} teaches {n} children.",
           "{name}สอนเด็กกี่คน", "{name}สอนเด็ก {n} คนครับ"),
          ("name", "Who teaches at the village school in {place}?", "{name} teaches at the village school in {place}.",
           "ใครสอนที่โรงเรียนประจำหมู่บ้านใน{place}", "{name}สอนที่โรงเรียนประจำหมู่บ้านใน{place}ครับ")]),
        ("shopping", {"n": (6, 30)},
         "{name} bought {n} eggs and a bag of rice and paid {price} baht.",
         "{name}ซื้อไข่ {n} ฟองกับข้าวสารหนึ่งถุง จ่ายเงินไป {price} บาท",
         [("n", "How many eggs did {name} buy?", "{name} bought {n} eggs.",
           "{name}ซื้อไข่กี่ฟอง", "{name}ซื้อไข่ {n} ฟองครับ"),
          ("price", "How much did {name} pay?", "{name} paid {price} baht.",
           "{name}จ่ายเงินไปเท่าไร", "{name}จ่ายเงินไป {price} บาทครับ")]),
    ],
}
PER_FRAME = {"train": 8, "heldout": 4}  # passages per frame and language
WRAPPERS = {"en": ("{p}\n{q}", "Read this: {p}\nQuestion: {q}", "{p} {q}", "Text: {p}\n\n{q}"),
            "th": ("{p}\n{q}", "อ่านข้อความนี้: {p}\nคำถาม: {q}", "{p} {q}", "ข้อความ: {p}\n\n{q}")}


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
    """Whether ``value`` is written in ``text`` (a number as a whole number: 4 is not in 14)."""
    return re.search(r"(?<!\d)" + re.escape(value) + r"(?!\d)", text) is not None


def _fields(template):
    """The slot names of a frame's template, in order."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def grounded(split):
    """The grounding pairs of ``split`` as ``(record, passage, question, value, invented)``: for each
    frame of FRAMES[split] and each language PER_FRAME[split] passages with their own values, each
    asked one of its questions; the invented value is another value of the same slot that the
    prompt does not contain (``occurs``)."""
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
                invented = values[slot]
                for _ in range(1000):
                    if invented != values[slot] and not occurs(invented, content):
                        break
                    invented = _value(rng, split, slot, lang, ranges)
                else:
                    raise RuntimeError(f"{kind}: no value to invent for {slot} in {content!r}")
                record = {"id": f"{kind}-{lang}-fact-{len(out):03d}", "prompt": [chat.u(content)],
                          "chosen": [chat.a(a_t.format(**values))],
                          "rejected": [chat.a(a_t.format(**dict(values, **{slot: invented})))]}
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
