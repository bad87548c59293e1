"""Writes the embedded Thai + English chat set: train.jsonl and heldout.jsonl beside this file.

Original text written for this project, released under CC0 1.0 (see ../LICENSE): greetings,
simple facts, arithmetic, Thai <-> English translation and short instructions, single- and
multi-turn, some with a system prompt. Each answer is in the language of its question (a
translation answers in the language asked for) and the Thai answers keep one voice (ผม / ครับ).
Records are ``{"id": ..., "messages": [{"role": ..., "content": ...}, ...]}``. The output is a
pure function of this file (fixed seed): ``python make_chat.py`` rewrites the same bytes, and
tests/test_preprocess_sft.py checks that it does. Every eighth conversation, after a seeded
shuffle, goes to heldout.jsonl (for generalisation checks); the rest to train.jsonl.
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEM_EN = "You are a helpful assistant. Answer briefly and correctly."
SYSTEM_TH = "คุณเป็นผู้ช่วยที่เป็นประโยชน์ ตอบสั้น ๆ และถูกต้อง"

GREETINGS = [
    ("en", "Hello!", "Hello! How can I help you today?"),
    ("en", "Good morning.", "Good morning! How can I help you?"),
    ("en", "Hi, how are you?", "I'm fine, thank you. How can I help you?"),
    ("en", "Thank you!", "You're welcome!"),
    ("en", "Goodbye.", "Goodbye! Have a nice day."),
    ("en", "Who are you?", "I am a small assistant that answers simple questions in Thai and English."),
    ("en", "Can you speak Thai?", "Yes, I can answer simple questions in Thai and in English."),
    ("th", "สวัสดีครับ", "สวัสดีครับ มีอะไรให้ช่วยไหมครับ"),
    ("th", "สวัสดีค่ะ", "สวัสดีครับ มีอะไรให้ช่วยไหมครับ"),
    ("th", "สบายดีไหม", "สบายดีครับ ขอบคุณที่ถาม มีอะไรให้ช่วยไหมครับ"),
    ("th", "ขอบคุณครับ", "ยินดีครับ"),
    ("th", "ขอบคุณค่ะ", "ยินดีครับ"),
    ("th", "ลาก่อนนะ", "ลาก่อนครับ ขอให้เป็นวันที่ดีครับ"),
    ("th", "คุณเป็นใคร", "ผมเป็นผู้ช่วยตัวเล็ก ๆ ที่ตอบคำถามง่าย ๆ ได้ทั้งภาษาไทยและภาษาอังกฤษครับ"),
    ("th", "อรุณสวัสดิ์", "อรุณสวัสดิ์ครับ มีอะไรให้ช่วยไหมครับ"),
    ("th", "พูดภาษาอังกฤษได้ไหม", "ได้ครับ ผมตอบคำถามง่าย ๆ ได้ทั้งภาษาไทยและภาษาอังกฤษครับ"),
]

# (country EN, capital EN, country TH, capital TH)
CAPITALS = [
    ("Thailand", "Bangkok", "ไทย", "กรุงเทพมหานคร"), ("Japan", "Tokyo", "ญี่ปุ่น", "โตเกียว"),
    ("France", "Paris", "ฝรั่งเศส", "ปารีส"), ("Laos", "Vientiane", "ลาว", "เวียงจันทน์"),
    ("Vietnam", "Hanoi", "เวียดนาม", "ฮานอย"), ("Cambodia", "Phnom Penh", "กัมพูชา", "พนมเปญ"),
    ("Malaysia", "Kuala Lumpur", "มาเลเซีย", "กัวลาลัมเปอร์"), ("the Philippines", "Manila", "ฟิลิปปินส์", "มะนิลา"),
    ("Myanmar", "Naypyidaw", "เมียนมา", "เนปยีดอ"), ("China", "Beijing", "จีน", "ปักกิ่ง"),
    ("South Korea", "Seoul", "เกาหลีใต้", "โซล"), ("India", "New Delhi", "อินเดีย", "นิวเดลี"),
    ("the United Kingdom", "London", "สหราชอาณาจักร", "ลอนดอน"), ("Germany", "Berlin", "เยอรมนี", "เบอร์ลิน"),
    ("Italy", "Rome", "อิตาลี", "โรม"), ("Spain", "Madrid", "สเปน", "มาดริด"), ("Egypt", "Cairo", "อียิปต์", "ไคโร"),
    ("Australia", "Canberra", "ออสเตรเลีย", "แคนเบอร์รา"), ("Canada", "Ottawa", "แคนาดา", "ออตตาวา"),
    ("the United States", "Washington, D.C.", "สหรัฐอเมริกา", "วอชิงตัน ดี.ซี."),
    ("Brazil", "Brasília", "บราซิล", "บราซิเลีย"), ("Russia", "Moscow", "รัสเซีย", "มอสโก"),
    ("Kenya", "Nairobi", "เคนยา", "ไนโรบี"), ("Mexico", "Mexico City", "เม็กซิโก", "เม็กซิโกซิตี"),
    ("Norway", "Oslo", "นอร์เวย์", "ออสโล"), ("Greece", "Athens", "กรีซ", "เอเธนส์"),
]

# (question EN, answer EN, question TH, answer TH)
FACTS = [
    ("How many days are in a week?", "A week has 7 days.", "หนึ่งสัปดาห์มีกี่วัน", "หนึ่งสัปดาห์มี 7 วันครับ"),
    ("How many months are in a year?", "A year has 12 months.", "หนึ่งปีมีกี่เดือน", "หนึ่งปีมี 12 เดือนครับ"),
    ("How many hours are in a day?", "A day has 24 hours.", "หนึ่งวันมีกี่ชั่วโมง", "หนึ่งวันมี 24 ชั่วโมงครับ"),
    ("How many minutes are in an hour?", "An hour has 60 minutes.",
     "หนึ่งชั่วโมงมีกี่นาที", "หนึ่งชั่วโมงมี 60 นาทีครับ"),
    ("How many seconds are in a minute?", "A minute has 60 seconds.",
     "หนึ่งนาทีมีกี่วินาที", "หนึ่งนาทีมี 60 วินาทีครับ"),
    ("At what temperature does water boil at sea level?", "At sea level, water boils at 100 degrees Celsius.",
     "ที่ระดับน้ำทะเล น้ำเดือดที่กี่องศาเซลเซียส", "ที่ระดับน้ำทะเล น้ำเดือดที่ 100 องศาเซลเซียสครับ"),
    ("At what temperature does water freeze?", "Water freezes at 0 degrees Celsius.",
     "น้ำกลายเป็นน้ำแข็งที่กี่องศาเซลเซียส", "น้ำกลายเป็นน้ำแข็งที่ 0 องศาเซลเซียสครับ"),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun.",
     "ดาวเคราะห์ดวงใดอยู่ใกล้ดวงอาทิตย์ที่สุด", "ดาวพุธอยู่ใกล้ดวงอาทิตย์ที่สุดครับ"),
    ("Which is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system.",
     "ดาวเคราะห์ดวงใดใหญ่ที่สุดในระบบสุริยะ", "ดาวพฤหัสบดีใหญ่ที่สุดในระบบสุริยะครับ"),
    ("How many legs does a spider have?", "A spider has 8 legs.", "แมงมุมมีกี่ขา", "แมงมุมมี 8 ขาครับ"),
    ("How many legs does an insect have?", "An insect has 6 legs.", "แมลงมีกี่ขา", "แมลงมี 6 ขาครับ"),
    ("How many sides does a triangle have?", "A triangle has 3 sides.",
     "สามเหลี่ยมมีกี่ด้าน", "สามเหลี่ยมมี 3 ด้านครับ"),
    ("How many sides does a hexagon have?", "A hexagon has 6 sides.",
     "รูปหกเหลี่ยมมีกี่ด้าน", "รูปหกเหลี่ยมมี 6 ด้านครับ"),
    ("Which is the largest ocean?", "The Pacific Ocean is the largest ocean.",
     "มหาสมุทรใดใหญ่ที่สุด", "มหาสมุทรแปซิฟิกใหญ่ที่สุดครับ"),
    ("What is the currency of Thailand?", "The currency of Thailand is the baht.",
     "สกุลเงินของประเทศไทยคืออะไร", "สกุลเงินของประเทศไทยคือบาทครับ"),
    ("How many consonants does the Thai alphabet have?", "The Thai alphabet has 44 consonants.",
     "พยัญชนะไทยมีกี่ตัว", "พยัญชนะไทยมี 44 ตัวครับ"),
    ("How many letters does the English alphabet have?", "The English alphabet has 26 letters.",
     "ตัวอักษรภาษาอังกฤษมีกี่ตัว", "ตัวอักษรภาษาอังกฤษมี 26 ตัวครับ"),
    ("When is Songkran?", "Songkran, the Thai New Year festival, is held from 13 to 15 April.",
     "สงกรานต์ตรงกับวันที่เท่าไร", "สงกรานต์ หรือวันขึ้นปีใหม่ไทย ตรงกับวันที่ 13 ถึง 15 เมษายนครับ"),
    ("What do bees make?", "Bees make honey.", "ผึ้งผลิตอะไร", "ผึ้งผลิตน้ำผึ้งครับ"),
    ("In which direction does the Sun rise?", "The Sun rises in the east.",
     "ดวงอาทิตย์ขึ้นทางทิศไหน", "ดวงอาทิตย์ขึ้นทางทิศตะวันออกครับ"),
    ("What is the chemical formula of water?", "The chemical formula of water is H2O.",
     "สูตรเคมีของน้ำคืออะไร", "สูตรเคมีของน้ำคือ H2O ครับ"),
    ("What colours are on the Thai flag?", "The Thai flag is red, white and blue.",
     "ธงชาติไทยมีสีอะไรบ้าง", "ธงชาติไทยมีสามสี คือ แดง ขาว และน้ำเงินครับ"),
    ("How many days does February have in a leap year?", "In a leap year, February has 29 days.",
     "ในปีอธิกสุรทิน เดือนกุมภาพันธ์มีกี่วัน", "ในปีอธิกสุรทิน เดือนกุมภาพันธ์มี 29 วันครับ"),
    ("What gas do plants take in to make food?", "Plants take in carbon dioxide to make food.",
     "พืชใช้แก๊สอะไรในการสร้างอาหาร", "พืชใช้แก๊สคาร์บอนไดออกไซด์ในการสร้างอาหารครับ"),
]

DAYS = [("Monday", "วันจันทร์"), ("Tuesday", "วันอังคาร"), ("Wednesday", "วันพุธ"), ("Thursday", "วันพฤหัสบดี"),
        ("Friday", "วันศุกร์"), ("Saturday", "วันเสาร์"), ("Sunday", "วันอาทิตย์")]
MONTHS = [("January", "มกราคม"), ("February", "กุมภาพันธ์"), ("March", "มีนาคม"), ("April", "เมษายน"),
          ("May", "พฤษภาคม"), ("June", "มิถุนายน"), ("July", "กรกฎาคม"), ("August", "สิงหาคม"),
          ("September", "กันยายน"), ("October", "ตุลาคม"), ("November", "พฤศจิกายน"), ("December", "ธันวาคม")]

WORDS = [
    ("water", "น้ำ"), ("rice", "ข้าว"), ("house", "บ้าน"), ("cat", "แมว"), ("dog", "สุนัข"), ("book", "หนังสือ"),
    ("school", "โรงเรียน"), ("teacher", "ครู"), ("friend", "เพื่อน"), ("tree", "ต้นไม้"), ("flower", "ดอกไม้"),
    ("mother", "แม่"), ("father", "พ่อ"), ("fish", "ปลา"), ("chicken", "ไก่"), ("elephant", "ช้าง"),
    ("river", "แม่น้ำ"), ("mountain", "ภูเขา"), ("sea", "ทะเล"), ("rain", "ฝน"), ("market", "ตลาด"),
    ("hospital", "โรงพยาบาล"), ("train", "รถไฟ"), ("airplane", "เครื่องบิน"), ("bicycle", "จักรยาน"),
    ("red", "สีแดง"), ("green", "สีเขียว"), ("yellow", "สีเหลือง"), ("white", "สีขาว"), ("black", "สีดำ"),
    ("eat", "กิน"), ("sleep", "นอน"), ("walk", "เดิน"), ("read", "อ่าน"), ("write", "เขียน"), ("hot", "ร้อน"),
    ("big", "ใหญ่"), ("small", "เล็ก"), ("mango", "มะม่วง"), ("banana", "กล้วย"), ("coconut", "มะพร้าว"),
    ("moon", "ดวงจันทร์"), ("star", "ดาว"), ("road", "ถนน"), ("car", "รถยนต์"), ("money", "เงิน"),
    ("today", "วันนี้"), ("tomorrow", "พรุ่งนี้"), ("yesterday", "เมื่อวาน"), ("thank you", "ขอบคุณ"),
    ("sorry", "ขอโทษ"),
]

SENTENCES = [
    ("I like to eat mango.", "ฉันชอบกินมะม่วง"), ("Where is the train station?", "สถานีรถไฟอยู่ที่ไหน"),
    ("Today the weather is very hot.", "วันนี้อากาศร้อนมาก"), ("My mother is a teacher.", "แม่ของฉันเป็นครู"),
    ("The cat is sleeping.", "แมวกำลังนอนหลับ"), ("How much is this?", "อันนี้ราคาเท่าไร"),
    ("I am going to the market.", "ฉันกำลังไปตลาด"), ("Thank you very much.", "ขอบคุณมาก"),
    ("I do not understand.", "ฉันไม่เข้าใจ"), ("Please speak slowly.", "กรุณาพูดช้า ๆ"),
    ("What is your name?", "คุณชื่ออะไร"), ("We read books at school.", "เราอ่านหนังสือที่โรงเรียน"),
    ("It is raining.", "ฝนกำลังตก"), ("I drink water every day.", "ฉันดื่มน้ำทุกวัน"),
    ("The elephant is big.", "ช้างตัวใหญ่"), ("My friend has a red car.", "เพื่อนของฉันมีรถยนต์สีแดง"),
]

FRUITS = [("mango", "มะม่วง"), ("banana", "กล้วย"), ("coconut", "มะพร้าว"), ("papaya", "มะละกอ"),
          ("pineapple", "สับปะรด"), ("durian", "ทุเรียน"), ("mangosteen", "มังคุด"), ("orange", "ส้ม")]
ANIMALS = [("cat", "แมว"), ("dog", "สุนัข"), ("elephant", "ช้าง"), ("fish", "ปลา"), ("chicken", "ไก่"),
           ("horse", "ม้า"), ("buffalo", "ควาย"), ("tiger", "เสือ")]
COLOURS = [("red", "สีแดง"), ("green", "สีเขียว"), ("blue", "สีน้ำเงิน"), ("yellow", "สีเหลือง"),
           ("white", "สีขาว"), ("black", "สีดำ"), ("orange", "สีส้ม"), ("purple", "สีม่วง")]
SPELL = ["garden", "window", "river", "planet", "yellow", "banana", "teacher", "market", "school", "orange",
         "thunder", "pencil", "bottle", "candle", "rabbit", "silver", "forest", "island"]


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def qa(kind, lang, question, answer):
    return kind, lang, [u(question), a(answer)]


def two(kind, lang, q1, a1, q2, a2):
    return kind, lang, [u(q1), a(a1), u(q2), a(a2)]


def and_list_en(items):
    return ", ".join(items[:-1]) + " and " + items[-1]


def and_list_th(items):
    return " ".join(items[:-1]) + " และ" + items[-1]


def arithmetic(rng, lang, op):
    x, y = rng.randint(2, 99), rng.randint(2, 99)
    if op == "-" and y > x:
        x, y = y, x
    if op == "*":
        x, y = rng.randint(2, 12), rng.randint(2, 12)
    z = {"+": x + y, "-": x - y, "*": x * y}[op]
    if lang == "en":
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        q = f"What is {x} + {y}?" if op == "+" else f"What is {x} {word} {y}?"
        return q, (f"{x} + {y} = {z}." if op == "+" else f"{x} {word} {y} is {z}."), z
    word = {"+": "บวก", "-": "ลบ", "*": "คูณ"}[op]
    return f"{x} {word} {y} เท่ากับเท่าไร", f"{x} {word} {y} เท่ากับ {z} ครับ", z


def single_turns(rng):
    out = []
    for lang, q, ans in GREETINGS:
        out.append(("greet", lang, [u(q), a(ans)]))
    for c_en, cap_en, c_th, cap_th in CAPITALS:
        out.append(qa("capital", "en", f"What is the capital of {c_en}?", f"The capital of {c_en} is {cap_en}."))
        out.append(("capital", "th", [u(f"เมืองหลวงของประเทศ{c_th}คือเมืองอะไร"),
                                      a(f"เมืองหลวงของประเทศ{c_th}คือ{cap_th}ครับ")]))
    for q_en, a_en, q_th, a_th in FACTS:
        out.append(qa("fact", "en", q_en, a_en))
        out.append(qa("fact", "th", q_th, a_th))
    for i, (d_en, d_th) in enumerate(DAYS):
        n_en, n_th = DAYS[(i + 1) % 7]
        out.append(qa("day", "en", f"What day comes after {d_en}?", f"{n_en} comes after {d_en}."))
        out.append(qa("day", "th", f"วันถัดจาก{d_th}คือวันอะไร", f"วันถัดจาก{d_th}คือ{n_th}ครับ"))
    for i, (m_en, m_th) in enumerate(MONTHS):
        out.append(("month", "en", [u(f"Which month is number {i + 1} of the year?"),
                                    a(f"{m_en} is month number {i + 1} of the year.")]))
        out.append(qa("month", "th", f"เดือนที่ {i + 1} ของปีคือเดือนอะไร",
                      f"เดือนที่ {i + 1} ของปีคือเดือน{m_th}ครับ"))
    for en, th in WORDS:
        if rng.random() < 0.5:
            out.append(qa("word", "en", f"How do you say '{en}' in Thai?", f"'{en}' in Thai is '{th}'."))
        else:
            out.append(qa("word", "en", f"What does '{th}' mean in English?", f"'{th}' means '{en}'."))
        if rng.random() < 0.5:
            out.append(qa("word", "th", f"คำว่า '{th}' ภาษาอังกฤษคืออะไร",
                          f"คำว่า '{th}' ในภาษาอังกฤษคือ '{en}' ครับ"))
        else:
            out.append(qa("word", "th", f"คำว่า '{en}' ภาษาไทยคืออะไร", f"คำว่า '{en}' ในภาษาไทยคือ '{th}' ครับ"))
    for en, th in SENTENCES:
        out.append(qa("sentence", "en", f"Translate into Thai: {en}", th))
        out.append(qa("sentence", "th", f"แปลเป็นภาษาอังกฤษ: {th}", en))
    for i in range(36):
        lang, op = ("en", "th")[i % 2], "+-*"[i // 2 % 3]
        q, ans, _ = arithmetic(rng, lang, op)
        out.append(("arith", lang, [u(q), a(ans)]))
    return out


def join(numbers):
    return ", ".join(map(str, numbers))


def instructions(rng):
    out = []
    for i in range(12):
        nums = rng.sample(range(1, 100), rng.randint(3, 5))
        up = sorted(nums)
        down = up[::-1]
        shown = ", ".join(map(str, nums))
        if i % 2 == 0:
            out.append(qa("sort", "en", f"Sort these numbers from smallest to largest: {shown}", join(up)))
            out.append(qa("sort", "th", f"เรียงตัวเลขต่อไปนี้จากมากไปน้อย: {shown}", join(down) + " ครับ"))
        else:
            out.append(qa("sort", "en", f"Sort these numbers from largest to smallest: {shown}", join(down)))
            out.append(qa("sort", "th", f"เรียงตัวเลขต่อไปนี้จากน้อยไปมาก: {shown}", join(up) + " ครับ"))
    for _ in range(10):
        n = rng.randint(1, 200)
        parity_en, parity_th = ("even", "เลขคู่") if n % 2 == 0 else ("odd", "เลขคี่")
        out.append(qa("parity", "en", f"Is {n} even or odd?", f"{n} is {parity_en}."))
        m = rng.randint(1, 200)
        parity_th = "เลขคู่" if m % 2 == 0 else "เลขคี่"
        out.append(qa("parity", "th", f"{m} เป็นเลขคู่หรือเลขคี่", f"{m} เป็น{parity_th}ครับ"))
    for _ in range(10):
        x, y = rng.sample(range(10, 100), 2)
        big, small = max(x, y), min(x, y)
        out.append(qa("compare", "en", f"Which is larger, {x} or {y}?", f"{big} is larger than {small}."))
        x, y = rng.sample(range(10, 100), 2)
        big, small = max(x, y), min(x, y)
        out.append(qa("compare", "th", f"{x} กับ {y} ตัวไหนมากกว่ากัน", f"{big} มากกว่า {small} ครับ"))
    for w in SPELL:
        if len(w) % 2:
            out.append(qa("spell", "en", f"Write the word '{w}' backwards.", w[::-1]))
        else:
            out.append(qa("spell", "en", f"How many letters are in the word '{w}'?",
                          f"The word '{w}' has {len(w)} letters."))
    for _ in range(8):
        h = rng.randint(2, 9)
        out.append(qa("convert", "en", f"How many minutes are in {h} hours?", f"{h} hours are {60 * h} minutes."))
        m = rng.randint(2, 9)
        out.append(qa("convert", "th", f"{m} เมตรเท่ากับกี่เซนติเมตร", f"{m} เมตรเท่ากับ {100 * m} เซนติเมตรครับ"))
    for name_en, name_th, pool in (("fruits", "ผลไม้", FRUITS), ("animals", "สัตว์", ANIMALS),
                                   ("colours", "สี", COLOURS)):
        for _ in range(3):
            en = [p[0] for p in rng.sample(pool, 3)]
            out.append(qa("list", "en", f"Name three {name_en}.", and_list_en([en[0].capitalize()] + en[1:]) + "."))
            pick = rng.sample(pool, 3)
            th = [p[1] for p in pick]
            out.append(qa("list", "th", f"บอกชื่อ{name_th}สามอย่าง", and_list_th(th) + "ครับ"))
    return out


def multi_turns(rng):
    out = []
    for i in range(14):  # arithmetic with follow-ups
        lang = ("en", "th")[i % 2]
        q, ans, z = arithmetic(rng, lang, "+")
        k = rng.randint(2, 20)
        if lang == "en":
            turns = [u(q), a(ans), u(f"And if you add {k} more?"), a(f"{z} + {k} = {z + k}.")]
        else:
            turns = [u(q), a(ans), u(f"แล้วถ้าบวกอีก {k} ล่ะ"), a(f"{z} บวก {k} เท่ากับ {z + k} ครับ")]
        out.append(("arith2", lang, turns))
    follow_ups = (  # a question, then the same question about another item
        ("capital2", CAPITALS,
         lambda x, y: (f"What is the capital of {x[0]}?", f"The capital of {x[0]} is {x[1]}.",
                       f"And of {y[0]}?", f"The capital of {y[0]} is {y[1]}."),
         lambda x, y: (f"เมืองหลวงของประเทศ{x[2]}คือเมืองอะไร", f"เมืองหลวงของประเทศ{x[2]}คือ{x[3]}ครับ",
                       f"แล้วประเทศ{y[2]}ล่ะ", f"เมืองหลวงของประเทศ{y[2]}คือ{y[3]}ครับ")),
        ("word2", WORDS,
         lambda x, y: (f"How do you say '{x[0]}' in Thai?", f"'{x[0]}' in Thai is '{x[1]}'.",
                       f"And '{y[0]}'?", f"'{y[0]}' in Thai is '{y[1]}'."),
         lambda x, y: (f"คำว่า '{x[1]}' ภาษาอังกฤษคืออะไร", f"คำว่า '{x[1]}' ในภาษาอังกฤษคือ '{x[0]}' ครับ",
                       f"แล้วคำว่า '{y[1]}' ล่ะ", f"คำว่า '{y[1]}' ในภาษาอังกฤษคือ '{y[0]}' ครับ")),
    )
    for kind, pool, english, thai in follow_ups:
        for i in range(14):
            x, y = rng.sample(pool, 2)
            lang = ("en", "th")[i % 2]
            out.append(two(kind, lang, *(english if lang == "en" else thai)(x, y)))
    greet = {lang: [(q, ans) for g_lang, q, ans in GREETINGS[:3] + GREETINGS[7:10] if g_lang == lang]
             for lang in ("en", "th")}
    for i in range(16):  # a greeting, then a fact; some switch language on the second question
        q_en, a_en, q_th, a_th = rng.choice(FACTS)
        lang = ("en", "th")[i % 2]
        g_q, g_a = rng.choice(greet[lang])
        second = (q_en, a_en) if (lang == "en") != (i % 4 == 3) else (q_th, a_th)
        out.append(("greet2", lang, [u(g_q), a(g_a), u(second[0]), a(second[1])]))
    for i in range(8):  # three turns: translate, then the sum of two numbers, then thanks
        en, th = rng.choice(SENTENCES)
        lang = ("en", "th")[i % 2]
        q, ans, _ = arithmetic(rng, lang, "+")
        if lang == "en":
            turns = [u(f"Translate into Thai: {en}"), a(th), u(q), a(ans), u("Thank you!"), a("You're welcome!")]
        else:
            turns = [u(f"แปลเป็นภาษาอังกฤษ: {th}"), a(en), u(q), a(ans), u("ขอบคุณครับ"), a("ยินดีครับ")]
        out.append(("mixed3", lang, turns))
    return out


def build():
    rng = random.Random(16)
    convs = single_turns(rng) + instructions(rng) + multi_turns(rng)
    records, seen = [], set()
    for n, (kind, lang, messages) in enumerate(convs):
        key = json.dumps(messages, ensure_ascii=False)
        if key in seen:  # random picks can repeat a conversation: keep it once (and in one split)
            continue
        seen.add(key)
        if rng.random() < 0.25:
            messages = [{"role": "system", "content": SYSTEM_EN if lang == "en" else SYSTEM_TH}] + messages
        records.append({"id": f"{kind}-{lang}-{n:03d}", "messages": messages})
    rng.shuffle(records)
    heldout = records[::8]
    train = [r for i, r in enumerate(records) if i % 8]
    return train, heldout


def dumps(records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write(folder, train, heldout, what):
    """Writes train.jsonl and heldout.jsonl in ``folder`` (atomically; ``what`` names a record)."""
    for name, records in (("train.jsonl", train), ("heldout.jsonl", heldout)):
        path = os.path.join(folder, name)
        with open(path + ".tmp", "w", encoding="utf-8", newline="\n") as f:
            f.write(dumps(records))
        os.replace(path + ".tmp", path)
        print(f"wrote {path}: {len(records)} {what}")


def main():
    write(HERE, *build(), "conversations")


if __name__ == "__main__":
    main()
