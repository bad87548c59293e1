"""Thai PII: e-mail addresses, Thai phone numbers and national ID numbers replaced by placeholders.

Forms recognised (ASCII digits; a match never starts or ends inside a longer run of digits):

- e-mail: ``local@domain.tld`` -> ``<EMAIL>``;
- Thai national ID: 13 digits, or ``X-XXXX-XXXXX-XX-X``, replaced by ``<TH_ID>`` only when the
  check digit holds: d13 = (11 - (sum_{i=1..12} d_i * (14 - i)) mod 11) mod 10 (the Ministry of
  Interior's rule; reference-facts.md). Any other 13-digit number is left alone;
- phones -> ``<PHONE>``: mobile ``0[689]X-XXX-XXXX`` (also ``0[689]-XXXX-XXXX``), Bangkok
  landline ``02-XXX-XXXX``, with dashes, single spaces or nothing between the groups, and the
  international forms ``+66 …`` of both (the leading 0 dropped, optionally written ``(0)``).

Counts go to the task stats as ``pii=email``, ``pii=phone``, ``pii=th_id`` (replacements).
"""
from __future__ import annotations

import re

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.utils.typeshelper import StatHints

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]*[A-Za-z0-9_%+-])?@"
                   r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"\.[A-Za-z]{2,}(?![\w-])")
TH_ID = re.compile(r"(?<![0-9-])(?:[0-9]{13}|[0-9]-[0-9]{4}-[0-9]{5}-[0-9]{2}-[0-9])(?![0-9]|-[0-9])")
_S = r"[- ]?"
PHONE = re.compile(
    r"(?<![0-9+])(?:"
    rf"0[689](?:[0-9]{_S}[0-9]{{3}}|{_S}[0-9]{{4}}){_S}[0-9]{{4}}"          # mobile 0XX-XXX-XXXX / 0X-XXXX-XXXX
    rf"|02{_S}[0-9]{{3}}{_S}[0-9]{{4}}"                                     # Bangkok landline 02-XXX-XXXX
    rf"|\+66{_S}(?:\(0\){_S})?(?:[689][0-9]|2){_S}[0-9]{{3}}{_S}[0-9]{{4}}"  # +66 8X XXX XXXX / +66 2 XXX XXXX
    r")(?![0-9])")
PLACEHOLDERS = {"email": "<EMAIL>", "th_id": "<TH_ID>", "phone": "<PHONE>"}


def thai_id_valid(digits: str) -> bool:
    """True when the 13 digits of ``digits`` (separators ignored) satisfy the Thai ID check digit
    d13 = (11 - sum_{i=1..12} d_i * (14 - i) mod 11) mod 10."""
    d = [int(c) for c in digits if c.isdigit()]
    if len(d) != 13:
        return False
    return (11 - sum(d[i] * (13 - i) for i in range(12)) % 11) % 10 == d[12]


def replace_pii(text: str, email: bool = True, th_id: bool = True, phone: bool = True) -> tuple[str, dict]:
    """``text`` with the enabled kinds replaced (e-mail first, then IDs, then phones), and the
    number of replacements of each kind ``{"email", "th_id", "phone"}``."""
    counts = {"email": 0, "th_id": 0, "phone": 0}
    if email:
        text, counts["email"] = EMAIL.subn(PLACEHOLDERS["email"], text)
    if th_id:
        def _id(m):
            if thai_id_valid(m.group()):
                counts["th_id"] += 1
                return PLACEHOLDERS["th_id"]
            return m.group()
        text = TH_ID.sub(_id, text)
    if phone:
        text, counts["phone"] = PHONE.subn(PLACEHOLDERS["phone"], text)
    return text, counts


class ThaiPIIFormatter(BaseFormatter):
    """``replace_pii`` on every document's text; the kinds can be switched off one by one."""

    name = "📞 Thai PII"

    def __init__(self, email: bool = True, phone: bool = True, th_id: bool = True):
        super().__init__()
        self.email, self.phone, self.th_id = email, phone, th_id

    def format(self, text: str) -> str:
        text, counts = replace_pii(text, self.email, self.th_id, self.phone)
        for kind, n in counts.items():
            if n:
                self.stat_update(f"pii={kind}", value=n)
        return text

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update(StatHints.total)
            with self.track_time():
                new = self.format(doc.text)
            if new != doc.text:
                doc.metadata.setdefault("original_text", doc.text)
                doc.text = new
            yield doc
