"""Word lists for the generated test corpus (``synthetic.py``). Written for megatron_th, CC0-1.0.

Thai sentences are built as subject + time + verb + object + place + purpose, English ones from
similar parts; the lists are long enough that two generated documents share few character
5-grams (typical Jaccard below 0.15), as two unrelated web pages do.
"""

TH_SUBJECTS = [
    "นักเรียนชั้นมัธยมปลาย", "ครูประจำชั้นประถม", "ชาวบ้านริมคลอง", "เกษตรกรรุ่นใหม่", "พนักงานธนาคาร",
    "นักท่องเที่ยวชาวญี่ปุ่น", "แพทย์ประจำอำเภอ", "พยาบาลอาสาสมัคร", "วิศวกรโยธา", "ผู้ประกอบการร้านขนม",
    "เจ้าหน้าที่เทศบาลนคร", "นักวิจัยด้านพันธุ์พืช", "กลุ่มแม่บ้านสหกรณ์", "เยาวชนจิตอาสา", "ผู้ใหญ่บ้านหมู่สาม",
    "พ่อค้าปลาในตลาดเช้า", "นักกีฬาวอลเลย์บอลหญิง", "ช่างไม้ฝีมือดี", "ชาวประมงพื้นบ้าน",
    "บรรณารักษ์ห้องสมุดประชาชน", "คุณยายวัยเจ็ดสิบ", "นักศึกษาฝึกงาน", "เภสัชกรชุมชน", "ตำรวจจราจร",
    "ไกด์นำเที่ยวท้องถิ่น", "พระสงฆ์วัดป่า", "ศิลปินวาดภาพสีน้ำ", "นักดนตรีพื้นเมือง", "ทีมงานสารคดี",
    "สถาปนิกผังเมือง", "เชฟร้านอาหารอีสาน", "คนขับรถสองแถว", "ช่างซ่อมจักรยาน", "ครูสอนว่ายน้ำ", "นักข่าวภาคสนาม",
]
TH_TIMES = [
    "เมื่อเช้าวันจันทร์", "ในช่วงฤดูฝน", "เมื่อสัปดาห์ก่อน", "ตลอดทั้งปี", "ช่วงปลายเดือนตุลาคม",
    "เมื่อคืนวันเสาร์", "ระหว่างวันหยุดยาว", "ตั้งแต่ต้นปีงบประมาณ", "ช่วงเทศกาลสงกรานต์", "หลังเลิกงาน",
    "ก่อนเที่ยงวันพุธ", "ในฤดูหนาวปีนี้", "ทุกวันอาทิตย์", "เมื่อสามวันที่แล้ว", "ช่วงปิดภาคเรียน",
    "ในคืนวันลอยกระทง", "ตอนรุ่งสาง", "เมื่อต้นเดือนมีนาคม", "ทุกเย็นวันศุกร์", "ในช่วงน้ำหลาก",
]
TH_VERBS = [
    "ปลูก", "ซ่อมแซม", "สำรวจ", "พัฒนา", "ออกแบบ", "จัดเตรียม", "ทดลองใช้", "ปรับปรุง", "ตรวจสอบ", "แบ่งปัน",
    "รวบรวม", "ดูแลรักษา", "จำหน่าย", "แปรรูป", "ก่อสร้าง", "บันทึกภาพ", "อนุรักษ์", "ฝึกสอนวิธีทำ", "ขนย้าย",
    "ทาสีใหม่ให้", "ถ่ายทอดความรู้เรื่อง", "เก็บตัวอย่าง", "คัดแยก", "ตกแต่ง", "ประเมินคุณภาพ",
]
TH_OBJECTS = [
    "ข้าวหอมมะลิ", "ผักปลอดสารพิษ", "ระบบน้ำประปาหมู่บ้าน", "ถนนลูกรังสายเก่า", "หลักสูตรภาษาอังกฤษ",
    "แผนที่เส้นทางเดินป่า", "สินค้าหัตถกรรมจักสาน", "ผ้าไหมทอมือ", "เมล็ดกาแฟอาราบิก้า", "ผลไม้ตามฤดูกาล",
    "ป่าชายเลน", "แปลงสมุนไพรไทย", "สะพานไม้ไผ่", "มุมหนังสือเด็ก", "บ่อเลี้ยงปลานิล", "โรงเรือนเพาะเห็ดนางฟ้า",
    "แผงโซลาร์เซลล์", "ตำรับอาหารพื้นเมือง", "เครื่องปั้นดินเผา", "น้ำผึ้งชันโรง", "ยางพาราแผ่นดิบ", "ขนมไทยโบราณ",
    "เรือหางยาว", "ศาลาริมน้ำ", "สวนทุเรียน", "ต้นกล้ามะม่วง", "แนวปะการังเทียม", "ตู้ยาสามัญประจำบ้าน",
    "ลานกีฬาชุมชน", "ระบบคัดแยกขยะ", "เส้นทางจักรยาน", "ข้าวไรซ์เบอร์รี่", "ปลาร้าบอง", "กระติบข้าวเหนียว",
    "พวงมาลัยดอกรัก", "เตาเผาถ่านประสิทธิภาพสูง",
]
TH_PLACES = [
    "เชียงใหม่", "ขอนแก่น", "นครราชสีมา", "ภูเก็ต", "สงขลา", "อุบลราชธานี", "ลำปาง", "น่าน", "ตราด", "กาญจนบุรี",
    "สุราษฎร์ธานี", "พิษณุโลก", "อุดรธานี", "ระยอง", "นครศรีธรรมราช", "แม่ฮ่องสอน", "บุรีรัมย์", "ชัยนาท",
    "เพชรบุรี", "สกลนคร", "ลพบุรี", "กระบี่", "ตาก", "ยโสธร", "สตูล", "พะเยา", "อ่างทอง", "ปัตตานี",
]
TH_PURPOSES = [
    "เพื่อเพิ่มรายได้ให้ครอบครัว", "เพื่อให้เด็กมีพื้นที่เรียนรู้", "เพื่อลดต้นทุนการผลิต",
    "เพื่อรองรับนักท่องเที่ยว", "เพื่อสืบสานภูมิปัญญาท้องถิ่น", "เพื่อป้องกันน้ำท่วมซ้ำซาก",
    "เพื่อให้ผู้สูงอายุมีงานทำ", "เพื่อฟื้นฟูระบบนิเวศ", "เพื่อส่งออกไปยังประเทศเพื่อนบ้าน",
    "เพื่อเป็นต้นแบบให้ตำบลอื่น", "เพื่อประหยัดค่าไฟฟ้า", "เพื่อความปลอดภัยของผู้สัญจร",
    "เพื่อใช้ในโรงอาหารของโรงเรียน", "เพื่อเก็บไว้ใช้ยามแล้ง", "เพื่อดึงดูดคนรุ่นใหม่กลับบ้านเกิด",
]
TH_COMMENTS = [
    "ผลที่ได้ดีกว่าที่คาดไว้มาก", "หลายครอบครัวมีรายได้เพิ่มขึ้นอย่างชัดเจน",
    "ยังต้องการงบประมาณเพิ่มเติมอีกพอสมควร", "คนในชุมชนให้ความร่วมมือเป็นอย่างดี", "ปัญหาหลักคือการขาดแคลนแรงงาน",
    "ทางจังหวัดจะขยายผลไปยังอำเภออื่น", "ผู้เข้าร่วมส่วนใหญ่พอใจกับผลลัพธ์", "อุปสรรคสำคัญคือสภาพอากาศที่แปรปรวน",
    "มีหน่วยงานเอกชนสนใจร่วมลงทุน", "ทีมงานวางแผนจะจัดกิจกรรมนี้ทุกปี", "ราคาขายปลีกสูงขึ้นเกือบเท่าตัว",
    "เด็กหลายคนเริ่มสนใจอาชีพนี้มากขึ้น",
]
EN_SUBJECTS = [
    "a group of farmers", "the village librarian", "two nurses from the district hospital", "a young engineer",
    "the local football coach", "volunteers from the university", "the owner of a small bakery",
    "a retired teacher", "several fishermen", "the town council", "a team of researchers",
    "students in the final year", "a tour guide", "the head of the cooperative", "an architect from the city",
    "three musicians", "the market vendors", "a pharmacist", "the park rangers", "a documentary crew",
    "the bus drivers", "an art teacher", "the monks", "a beekeeper", "my neighbour Malee", "our cycling club",
    "a sculptor", "the harbour master", "two carpenters", "a weaving collective", "the night shift", "a botanist",
    "schoolchildren", "an elderly couple", "the firefighters", "a young chef", "nearby temples", "the radio host",
    "a potter", "shop owners downtown", "Grandma Bua",
]
EN_VERBS = [
    "repaired", "planted", "surveyed", "designed", "tested", "improved", "inspected", "shared", "collected",
    "maintained", "sold", "processed", "built", "photographed", "protected", "explained", "moved", "painted",
    "measured", "sorted", "decorated", "evaluated", "mapped", "restored", "cleaned", "weighed", "labelled",
    "rebuilt", "harvested", "delivered", "printed", "sketched", "recorded", "cooked", "dried", "fenced", "watered",
    "counted", "borrowed", "donated", "polished", "stitched",
]
EN_OBJECTS = [
    "the old water pipes", "organic vegetables", "a new hiking trail", "handmade silk scarves", "coffee seedlings",
    "the mangrove forest", "a herb garden", "a bamboo bridge", "the reading corner", "fish ponds", "solar panels",
    "traditional recipes", "clay pottery", "wild honey", "rubber sheets", "long-tail boats",
    "the riverside pavilion", "durian orchards", "mango saplings", "an artificial reef", "a first aid cabinet",
    "the sports field", "a waste sorting system", "bicycle lanes", "rice terraces", "the community radio",
    "a charcoal kiln", "jasmine rice", "banana leaves", "a floating market", "lotus ponds", "tamarind pods",
    "an irrigation canal", "wooden toys", "indigo cloth", "chili paste", "a mushroom hut", "teak furniture",
    "orchid seedlings", "fishing nets", "a rainwater tank", "old photographs", "herbal soap", "coconut sugar",
    "a footbridge",
]
EN_PLACES = [
    "near Chiang Mai", "in Khon Kaen", "outside Korat", "on Phuket", "in Songkhla", "around Ubon", "in Lampang",
    "in Nan province", "near Trat", "in Kanchanaburi", "in Surat Thani", "around Phitsanulok", "in Udon Thani",
    "near Rayong", "in Nakhon Si Thammarat", "in Mae Hong Son", "in Buriram", "near Krabi", "by the Mekong",
    "up in Doi Inthanon", "along the Chao Phraya", "in Yasothon", "on Koh Lanta", "in Satun", "around Phayao",
    "in Ang Thong", "close to Pattani", "beside the reservoir", "at the old railway station",
]
EN_PURPOSES = [
    "to raise household incomes", "so that children have a place to learn", "to cut production costs",
    "to welcome more visitors", "to keep local knowledge alive", "to prevent repeated flooding",
    "to give older people paid work", "to restore the local ecosystem", "to sell across the border",
    "as a model for other districts", "to save on electricity", "to make the road safer for everyone",
    "for the school canteen", "to store water for the dry season", "to bring young people back home",
    "before the monsoon arrived", "after months of planning", "despite a tiny budget", "over three long weekends",
    "using only local materials", "while tourists watched", "in time for the festival", "without any machines",
    "for a regional competition", "at the request of parents", "on behalf of the district",
]
EN_COMMENTS = [
    "The results were better than anyone expected.", "Many families now earn noticeably more than before.",
    "The project still needs more funding to grow.", "People in the community have been very supportive.",
    "The main problem is that there are not enough workers.",
    "The province plans to repeat it in other districts.", "Most participants were happy with what they achieved.",
    "The weather has been the biggest obstacle so far.", "A private company has shown interest in investing.",
    "The team wants to hold the event every year.", "Retail prices have almost doubled since then.",
    "Several teenagers now want to learn the trade.", "Nobody had tried anything like it in this valley.",
    "Orders from Bangkok arrived within a week.", "Rain delayed the work twice, but nobody gave up.",
    "Some visitors stayed for days just to watch.", "Costs fell by a third once everyone shared tools.",
    "Local radio followed every step of the story.", "Children painted signs to guide the guests.",
    "It became a small source of pride for everyone.", "Officials promised to visit again next spring.",
    "A few skeptics changed their minds quickly.",
]
# Web boilerplate, one block per made-up site: navigation line, footer lines.
SITES = [
    ("หน้าแรก | ข่าวท้องถิ่น | บทความ | ติดต่อเรา",
     ["Copyright © 2019 บ้านสวนนิวส์ สงวนลิขสิทธิ์", "เว็บไซต์นี้ใช้คุกกี้เพื่อพัฒนาประสบการณ์ของผู้ใช้ ยอมรับ"]),
    ("Home » News » Community",
     ["Copyright © 2021 Riverside Weekly. All rights reserved.",
      "This website uses cookies to improve your experience. Accept"]),
    ("หน้าหลัก › เกษตร › ชุมชน › วิดีโอ",
     ["© 2020 เกษตรก้าวหน้าดอทคอม", "แชร์: Facebook Twitter Line"]),
    ("เมนู · ท่องเที่ยว · อาหาร · ที่พัก",
     ["ติดต่อโฆษณาได้ที่ฝ่ายการตลาดของเว็บไซต์ทุกวันทำการ", "สงวนลิขสิทธิ์ 2018 เที่ยวไทยไปด้วยกัน"]),
    ("Home | About | Blog | Contact",
     ["Share on Facebook Share on Twitter", "Powered by WordPress | Theme by ThemeStudio"]),
    ("หน้าแรก > สุขภาพ > ความรู้ทั่วไป",
     ["บทความที่เกี่ยวข้อง", "ขอบคุณข้อมูลจากเครือข่ายสุขภาพชุมชน"]),
]
AUTHORS = [
    "admin", "สมชาย", "somsri", "editor01", "นิดา", "webmaster", "ป้าแดง", "khun_tom", "มานะ", "joy",
]
CATEGORIES = [
    "Uncategorized", "ข่าวทั่วไป", "ไลฟ์สไตล์", "เกษตร", "General", "ท่องเที่ยว",
]
NAMES = [
    "somchai", "nida.p", "malee88", "kittisak", "tom.w", "suda", "ploy", "arthit", "jane.d", "narong",
]
DOMAINS = [
    "example.com", "example.co.th", "mail.example.org", "example.ac.th", "example.net",
]
