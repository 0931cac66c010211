#!/usr/bin/env python3
"""Generate the "contoso" demo dataset for igaflow.

A small, realistic company: an HR export (persons), an Active Directory export
(accounts, groups, memberships) for two consecutive days, an incremental HR
change set applying on top of day 2, and a file of manual role assignments.

Usage (from the repository root):

    python3 datasets/contoso/generate.py           # (re)write every file, print a summary
    python3 datasets/contoso/generate.py --check   # verify the files on disk, write nothing

Standard library only, Python 3.11+.  Deterministic: a single
random.Random(SEED), iteration over sorted structures only, every CSV sorted by
its key, UTF-8 without BOM, "\\n" line endings, csv.QUOTE_MINIMAL.  Running the
script twice gives byte-identical files; `--check` regenerates everything in
memory and compares it byte for byte with the files on disk before checking
the content rules (counts, unique keys, referential integrity, day1 -> day2
differences).
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import io
import random
import sys
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

SEED = 20261122
DAY1 = "2026-11-22"  # date of the day1 exports
DAY2 = "2026-11-23"  # date of the day2 exports
BASE_DN = "DC=contoso,DC=com"
MAIL_DOMAIN = "contoso.com"

ROOT = Path(__file__).resolve().parent

HR_COLUMNS = [
    "employee_id", "first_name", "last_name", "email", "department", "title",
    "manager_id", "status", "start_date", "end_date", "location",
]
ACCOUNT_COLUMNS = [
    "dn", "sam_account_name", "employee_id", "mail", "display_name", "department",
    "user_account_control",
]
GROUP_COLUMNS = ["dn", "cn"]
MEMBERSHIP_COLUMNS = ["account_dn", "group_dn"]
INCREMENTAL_COLUMNS = ["command"] + HR_COLUMNS
ASSIGNMENT_COLUMNS = ["owner_key", "role", "start_date", "end_date"]

UAC_ENABLED = "512"
UAC_DISABLED = "514"
UAC_SERVICE = "66048"  # 512 + DONT_EXPIRE_PASSWORD (0x10000): enabled

DEPARTMENTS = ["Finance", "Sales", "Marketing", "IT", "HR", "Operations", "Legal", "R&D"]
# staff per department, excluding the department manager (and the CEO)
DEPT_SIZES = {
    "Finance": 22, "Sales": 40, "Marketing": 18, "IT": 25,
    "HR": 14, "Operations": 25, "Legal": 12, "R&D": 35,
}
# repeated entries weight the draw
TITLES = {
    "Finance": ["Financial Analyst", "Financial Analyst", "Senior Financial Analyst",
                "Accountant", "Accountant", "Controller"],
    "Sales": ["Sales Representative", "Sales Representative", "Sales Representative",
              "Account Manager", "Account Manager", "Sales Engineer"],
    "Marketing": ["Marketing Specialist", "Marketing Specialist", "Content Manager",
                  "Brand Manager"],
    "IT": ["IT Administrator", "Systems Engineer", "Helpdesk Technician",
           "Helpdesk Technician", "Network Engineer"],
    "HR": ["HR Specialist", "HR Specialist", "Recruiter", "HR Business Partner"],
    "Operations": ["Operations Analyst", "Operations Analyst", "Logistics Coordinator",
                   "Facilities Manager"],
    "Legal": ["Legal Counsel", "Paralegal", "Compliance Officer"],
    "R&D": ["Engineer", "Engineer", "Senior Engineer", "Research Scientist",
            "Lab Technician"],
}
MANAGER_TITLES = {
    "Finance": "Director, Finance",  # comma inside a field: must be quoted
    "Sales": "Head of Sales",
    "Marketing": "Marketing Director",
    "IT": "IT Director",
    "HR": "HR Director",
    "Operations": "Operations Director",
    "Legal": "General Counsel",
    "R&D": "Head of R&D",
}
LOCATIONS = ["Paris", "London", "New York", "São Paulo", "Zürich"]
LOCATION_WEIGHTS = [30, 25, 25, 10, 10]

FIRST_NAMES = [
    "Aarav", "Agnès", "Aleksander", "Alice", "Amara", "Andrea", "Beatriz", "Benjamin",
    "Björn", "Camille", "Carlos", "Chloé", "Daniel", "Dmitri", "Elena", "Emma", "Émile",
    "Fatima", "Felipe", "Freya", "Gabriel", "Grace", "Hannah", "Hiroshi", "Inês", "Isabel",
    "Jakub", "James", "Jana", "Javier", "Jürgen", "Karin", "Kwame", "Laura", "Léa", "Liam",
    "Lucía", "Magnus", "Małgorzata", "Marco", "Maria", "Mei", "Mohammed", "Niamh", "Ngozi",
    "Noah", "Olivia", "Omar", "Ólafur", "Pablo", "Patrick", "Petra", "Rafael", "Renée",
    "Ricardo", "Sakura", "Samuel", "Sara", "Sebastián", "Sofia", "Søren", "Tariq", "Thomas",
    "Tomasz", "Valentina", "Victor", "William", "Yara", "Yusuf",
]
LAST_NAMES = [
    "Adeyemi", "Ahmed", "Ali", "Andersen", "Bernard", "Berg", "Brontë", "Brown", "Çelik",
    "Chen", "Cohen", "Costa", "Davies", "Diallo", "Dubois", "Evans", "Fernández", "Ferreira",
    "Fischer", "Gallo", "García", "Haddad", "Hansen", "Hassan", "Hoffmann", "Horváth",
    "Huber", "Hughes", "Ivanova", "Jensen", "Johansson", "Johnson", "Karlsson", "Keller",
    "Kelly", "Kim", "Kowalski", "Kumar", "Larsen", "Lee", "Lefèvre", "Lewandowski",
    "Lindqvist", "Martin", "Mensah", "Meyer", "Moreau", "Murphy", "Nagy", "Nguyen",
    "Nielsen", "Novák", "Nowak", "O'Connor", "Okafor", "Oliveira", "Park", "Patel",
    "Pereira", "Popescu", "Rodríguez", "Romano", "Rossi", "Santos", "Sato", "Schröder",
    "Shah", "Silva", "Singh", "Smith-Jones", "Souza", "Suzuki", "Svensson", "Tanaka",
    "Taylor", "van der Berg", "Wagner", "Wang", "Weber", "Williams", "Wiśniewska",
]

# (first, last, department, title, location, tag) -- placed on staff slots
FEATURED = [
    ("José", "Müller", "Finance", "Financial Analyst", "Zürich", "mail_only_case"),
    ("Zoë", "Dvořák", "R&D", "Engineer", "London", "mail_only_case"),
    ("Łukasz", "Kowalski", "IT", "IT Administrator", "London", "admin_owner"),
    ("Øyvind", "Ødegaard", "Operations", 'Head of "Special Projects"', "Paris", "special_title"),
    ("François", "Dubois", "Marketing", "Marketing Specialist", "Paris", "drift_display"),
    ("Siobhán", "O'Brien", "Legal", "Legal Counsel", "London", "featured"),
    ("Ana", "Ñúñez", "Sales", "Account Manager", "São Paulo", "featured"),
    ("Anna", "Schmidt", "HR", "HR Specialist", "Zürich", "ambiguous_a"),
    ("Anna", "Schmidt", "Sales", "Sales Representative", "New York", "ambiguous_b"),
    ("Zoë", "Martin", "Marketing", "Content Manager", "Paris", "email_dedupe"),
    ("Zoe", "Martin", "IT", "Helpdesk Technician", "New York", "email_dedupe"),
]
CEO = ("Élise", "Laurent", "Operations", "Chief Executive Officer", "Paris")

# day2 joiners (ids 000301..000305) and incremental newcomers (000306..000308)
DAY2_JOINERS = [
    ("Ingrid", "Næss"), ("Mateo", "Ruiz"), ("Aïcha", "Benali"),
    ("Kenji", "Watanabe"), ("Tomás", "Herrera"),
]
INCREMENTAL_NEW = [("Priya", "Raman"), ("Grégoire", "Lemaire"), ("Nadia", "Haddad-Weiss")]

SERVICE_ACCOUNTS = [  # sam, display name, extra group
    ("svc_backup", "Backup Service", "SG_Backup_Operators"),
    ("svc_crm", "CRM Integration Service", "SG_Sales_CRM"),
    ("svc_erp", "ERP Batch Service", "SG_ERP_Users"),
    ("svc_exchange", "Exchange Service", "SG_Server_Admins"),
    ("svc_monitoring", "Monitoring Service", "SG_Server_Admins"),
    ("svc_print", "Print Spooler Service", "SG_Printers"),
    ("svc_sharepoint", "SharePoint Farm Service", "SG_Server_Admins"),
    ("svc_sql01", "SQL Server 01 Service", "SG_SQL_Admins"),
    ("svc_sql02", "SQL Server 02 Service", "SG_SQL_Admins"),
    ("svc_web01", "Web Server 01 Service", "SG_Server_Admins"),
]
# (first, last, cn style): users nobody in HR owns; the first uses "Last, First" CNs
ORPHANS = [
    ("Klaus", "Hartmann", "last_first"), ("Brigitte", "Vogel", "plain"),
    ("Kevin", "Doyle", "plain"), ("Ayumi", "Mori", "plain"),
    ("Luis", "Navarro", "plain"), ("Greta", "Lund", "plain"),
]

GROUP_NAMES = [
    "SG_All_Staff", "SG_Finance_R", "SG_Finance_RW", "SG_ERP_Users", "SG_HR_Admins",
    "SG_VPN", "SG_Sales_CRM", "SG_IT_Admins", "SG_Managers", "SG_Printers",
    "SG_Server_Admins", "SG_Backup_Operators", "SG_SQL_Admins", "SG_Service_Accounts",
    "SG_Marketing_Web", "SG_Legal_Contracts", "SG_R&D_Lab", "SG_Old_Intranet",
    "SG_O'Neil;Project",
] + [f"SG_Loc_{loc.replace(' ', '_')}" for loc in LOCATIONS] + [
    f"SG_Dept_{d}" for d in DEPARTMENTS
]
RENAMED_GROUP = ("SG_Sales_CRM", "SG_Sales_CRM_Users")  # cn changes, dn kept
DELETED_GROUP = "SG_Old_Intranet"

INCREMENTAL_COMMANDS = ["insert", "Insert", "update", "Update", "delete", "update", "Delete"]
MISSING_DELETE_KEY = "000999"

# ----------------------------------------------------------------------------
# helpers

_FOLD_SPECIAL = str.maketrans({
    "Ø": "O", "ø": "o", "Ł": "L", "ł": "l", "ß": "ss", "Æ": "AE", "æ": "ae",
    "Œ": "OE", "œ": "oe", "Đ": "D", "đ": "d", "ı": "i", "Þ": "Th", "þ": "th",
})


def fold(text: str) -> str:
    """ASCII-fold: José -> Jose, Ødegaard -> Odegaard, Łukasz -> Lukasz."""
    text = unicodedata.normalize("NFKD", text.translate(_FOLD_SPECIAL))
    return "".join(c for c in text if not unicodedata.combining(c))


def mail_part(text: str) -> str:
    return "".join(c for c in fold(text).lower() if c.isascii() and (c.isalnum() or c == "-"))


def sam_part(text: str) -> str:
    return "".join(c for c in fold(text).lower() if c.isascii() and c.isalnum())


def dn_escape(value: str) -> str:
    """Escape an RDN attribute value (RFC 4514, plus '=' as AD does)."""
    out = []
    for i, c in enumerate(value):
        if c in ',+"\\<>;=' or (c == "#" and i == 0) or (
            c == " " and (i == 0 or i == len(value) - 1)
        ):
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


def group_dn(cn: str) -> str:
    return f"CN={dn_escape(cn)},OU=Groups,{BASE_DN}"


def loc_group(location: str) -> str:
    return f"SG_Loc_{location.replace(' ', '_')}"


def to_csv(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def rand_date(rng: random.Random, lo: str, hi: str) -> str:
    d0, d1 = dt.date.fromisoformat(lo), dt.date.fromisoformat(hi)
    return (d0 + dt.timedelta(days=rng.randrange((d1 - d0).days + 1))).isoformat()


def add_days(day: str, n: int) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=n)).isoformat()


class EmailAllocator:
    def __init__(self) -> None:
        self.used: set[str] = set()

    def alloc(self, first: str, last: str, force_shared: bool = False) -> str:
        local = f"{mail_part(first)}.{mail_part(last)}"
        candidate, n = local, 2
        if not force_shared:
            while f"{candidate}@{MAIL_DOMAIN}" in self.used:
                candidate, n = f"{local}{n}", n + 1
        email = f"{candidate}@{MAIL_DOMAIN}"
        self.used.add(email)
        return email


class SamAllocator:
    def __init__(self) -> None:
        self.used: set[str] = set()

    def alloc(self, base: str) -> str:
        base = base[:20]
        sam, n = base, 2
        while sam in self.used:
            suffix = str(n)
            sam, n = base[: 20 - len(suffix)] + suffix, n + 1
        self.used.add(sam)
        return sam


# ----------------------------------------------------------------------------
# generation


def generate() -> tuple[dict[str, str], dict]:
    """Return ({relative path: file content}, facts used by README and --check)."""
    rng = random.Random(SEED)
    info: dict = {}

    # ---------------------------------------------------------------- persons
    persons: dict[str, dict[str, str]] = {}
    tags: dict[str, str] = {}
    used_names = {(mail_part(f), mail_part(l)) for f, l, *_ in FEATURED}
    used_names |= {(mail_part(f), mail_part(l)) for f, l in DAY2_JOINERS + INCREMENTAL_NEW}
    used_names |= {(mail_part(f), mail_part(l)) for f, l, _ in ORPHANS}
    used_names.add((mail_part(CEO[0]), mail_part(CEO[1])))

    def random_name() -> tuple[str, str]:
        while True:
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            key = (mail_part(first), mail_part(last))
            if key not in used_names:
                used_names.add(key)
                return first, last

    def person(pid, first, last, dept, title, manager, location) -> dict[str, str]:
        return {
            "employee_id": pid, "first_name": first, "last_name": last, "email": "",
            "department": dept, "title": title, "manager_id": manager, "status": "active",
            "start_date": "", "end_date": "", "location": location,
        }

    ceo_id = "000101"
    persons[ceo_id] = person(ceo_id, CEO[0], CEO[1], CEO[2], CEO[3], "", CEO[4])
    tags[ceo_id] = "ceo"
    managers: dict[str, str] = {}
    for i, dept in enumerate(DEPARTMENTS):
        pid = f"{102 + i:06d}"
        first, last = random_name()
        loc = rng.choices(LOCATIONS, LOCATION_WEIGHTS)[0]
        persons[pid] = person(pid, first, last, dept, MANAGER_TITLES[dept], ceo_id, loc)
        managers[dept] = pid
        tags[pid] = "manager"

    slots = [d for d in DEPARTMENTS for _ in range(DEPT_SIZES[d])]
    rng.shuffle(slots)
    staff_ids = [f"{i:06d}" for i in range(110, 301)]
    assert len(slots) == len(staff_ids) == 191
    featured_at: dict[int, tuple] = {}
    for feat in FEATURED:
        idx = rng.choice([i for i, d in enumerate(slots) if d == feat[2] and i not in featured_at])
        featured_at[idx] = feat
    for i, (pid, dept) in enumerate(zip(staff_ids, slots)):
        if i in featured_at:
            first, last, dept, title, loc, tag = featured_at[i]
            tags[pid] = tag
        else:
            first, last = random_name()
            title = rng.choice(TITLES[dept])
            loc = rng.choices(LOCATIONS, LOCATION_WEIGHTS)[0]
            tags[pid] = "staff"
        persons[pid] = person(pid, first, last, dept, title, managers[dept], loc)

    reserved: set[str] = {pid for pid, t in tags.items() if t != "staff"}

    def pick(n: int, pool, cond=lambda p: True) -> list[str]:
        cands = sorted(pid for pid in pool if pid not in reserved and cond(persons[pid]))
        chosen = sorted(rng.sample(cands, n))
        reserved.update(chosen)
        return chosen

    terminated = pick(10, persons)
    suspended = pick(8, persons)
    contractors = pick(4, persons)
    no_account = pick(14, persons)
    for pid in terminated:
        persons[pid]["status"] = "terminated"
    for pid in suspended:
        persons[pid]["status"] = "suspended"

    for pid in sorted(persons):
        p = persons[pid]
        if pid == ceo_id:
            p["start_date"] = "2010-01-04"
        elif tags[pid] == "manager":
            p["start_date"] = rand_date(rng, "2010-01-01", "2016-12-31")
        elif pid in no_account:
            p["start_date"] = rand_date(rng, "2026-09-01", "2026-10-31")
        else:
            p["start_date"] = rand_date(rng, "2010-01-01", "2026-07-31")
        if pid in terminated:
            p["end_date"] = rand_date(rng, add_days(p["start_date"], 30), "2026-11-15")
        elif pid in contractors:
            p["end_date"] = rand_date(rng, "2027-01-31", "2027-12-31")

    emails = EmailAllocator()
    ambiguous = sorted(pid for pid, t in tags.items() if t.startswith("ambiguous"))
    for pid in sorted(persons):
        p = persons[pid]
        shared = pid == ambiguous[1]
        p["email"] = emails.alloc(p["first_name"], p["last_name"], force_shared=shared)
    assert persons[ambiguous[0]]["email"] == persons[ambiguous[1]]["email"]

    info.update(ceo=ceo_id, managers=managers, terminated=terminated, suspended=suspended,
                contractors=contractors, no_account=no_account, ambiguous=ambiguous)
    info["email_dedupe"] = sorted(pid for pid, t in tags.items() if t == "email_dedupe")

    # --------------------------------------------------------------- accounts
    sams = SamAllocator()
    accounts: dict[str, dict[str, str]] = {}  # dn -> row
    account_of: dict[str, str] = {}  # employee id -> dn (owner, however correlated)

    terminated_with_account = sorted(rng.sample(terminated, 6))
    mail_only_case = sorted(pid for pid, t in tags.items() if t == "mail_only_case")
    plain_active = lambda p: p["status"] == "active"  # noqa: E731
    mail_only_exact = pick(4, persons, plain_active)
    drift_dept = pick(2, persons, plain_active)
    drift_display = sorted(pid for pid, t in tags.items() if t == "drift_display")
    suspended_disabled = sorted(rng.sample(suspended, 3))

    def add_account(row: dict[str, str]) -> str:
        assert row["dn"] not in accounts, row["dn"]
        accounts[row["dn"]] = row
        return row["dn"]

    def user_dn(cn: str, ou: str) -> str:
        return f"CN={dn_escape(cn)},OU={ou},{BASE_DN}"

    owned = sorted(
        pid for pid, p in persons.items()
        if (p["status"] != "terminated" and pid not in no_account) or pid in terminated_with_account
    )
    for pid in owned:
        p = persons[pid]
        sam = sams.alloc(sam_part(p["first_name"])[:1] + sam_part(p["last_name"]))
        display = f"{p['first_name']} {p['last_name']}"
        department = p["department"]
        if pid in drift_display:
            display = fold(display)
        if pid in drift_dept:
            department = rng.choice([d for d in DEPARTMENTS if d != p["department"]])
        ou = "Disabled Users" if p["status"] == "terminated" else "Users"
        dn = user_dn(display, ou)
        if dn in accounts:  # CN clash (the two Anna Schmidt): AD needs a unique RDN
            dn = user_dn(f"{display} ({sam})", ou)
        mail = p["email"]
        employee_id = pid
        if pid in mail_only_case:
            local = mail.split("@")[0]
            mail = ".".join(x.capitalize() for x in local.split(".")) + "@Contoso.com"
            employee_id = ""
        elif pid in mail_only_exact or pid == ambiguous[1]:
            employee_id = ""
        if p["status"] == "terminated" or pid in suspended_disabled:
            uac = UAC_DISABLED
        else:
            uac = UAC_ENABLED
        account_of[pid] = add_account({
            "dn": dn, "sam_account_name": sam, "employee_id": employee_id, "mail": mail,
            "display_name": display, "department": department, "user_account_control": uac,
        })

    admin_owners = sorted(
        [pid for pid, t in tags.items() if t == "admin_owner"] + [managers["IT"]]
        + pick(6, persons, lambda p: p["department"] == "IT" and p["status"] == "active"
               and p["title"] != "Helpdesk Technician")
    )
    admin_accounts: dict[str, str] = {}  # owner id -> admin dn
    for pid in admin_owners:
        owner = accounts[account_of[pid]]
        sam = sams.alloc("adm_" + owner["sam_account_name"])
        admin_accounts[pid] = add_account({
            "dn": user_dn(sam, "Admins"), "sam_account_name": sam, "employee_id": "",
            "mail": "", "display_name": f"{persons[pid]['first_name']} "
            f"{persons[pid]['last_name']} (Admin)", "department": "IT",
            "user_account_control": UAC_ENABLED,
        })

    service_dns: dict[str, str] = {}
    for sam, display, _ in SERVICE_ACCOUNTS:
        sams.alloc(sam)
        service_dns[sam] = add_account({
            "dn": user_dn(sam, "Service Accounts"), "sam_account_name": sam,
            "employee_id": "", "mail": "", "display_name": display, "department": "",
            "user_account_control": UAC_SERVICE,
        })

    orphan_dns: list[str] = []
    for first, last, style in ORPHANS:
        sam = sams.alloc(sam_part(first)[:1] + sam_part(last))
        cn = f"{last}, {first}" if style == "last_first" else f"{first} {last}"
        mail = f"{mail_part(first)}.{mail_part(last)}@{MAIL_DOMAIN}"
        assert mail not in emails.used
        orphan_dns.append(add_account({
            "dn": user_dn(cn, "Users"), "sam_account_name": sam, "employee_id": "",
            "mail": mail, "display_name": f"{first} {last}",
            "department": rng.choice(DEPARTMENTS), "user_account_control": UAC_ENABLED,
        }))

    info.update(
        terminated_with_account=terminated_with_account, mail_only_case=mail_only_case,
        mail_only_exact=mail_only_exact, drift_dept=drift_dept, drift_display=drift_display,
        suspended_disabled=suspended_disabled, admin_owners=admin_owners,
        admin_accounts=admin_accounts, service_dns=service_dns, orphan_dns=orphan_dns,
        account_of=account_of,
    )

    # ------------------------------------------------------ groups/memberships
    groups = {group_dn(cn): cn for cn in GROUP_NAMES}
    gdn = {cn: group_dn(cn) for cn in GROUP_NAMES}
    memberships: set[tuple[str, str]] = set()

    def member(account: str, *cns: str) -> None:
        for cn in cns:
            memberships.add((account, gdn[cn]))

    for pid in owned:
        p, acc = persons[pid], account_of[pid]
        dept, title = p["department"], p["title"]
        boss = tags[pid] in ("manager", "ceo")
        member(acc, "SG_All_Staff", f"SG_Dept_{dept}", loc_group(p["location"]))
        if rng.random() < 0.85:
            member(acc, "SG_VPN")
        if rng.random() < 0.6:
            member(acc, "SG_Printers")
        if boss:
            member(acc, "SG_Managers")
        if pid == ceo_id:
            member(acc, "SG_Finance_R")
        if dept == "Finance":
            member(acc, "SG_Finance_R", "SG_ERP_Users")
            if boss or title in ("Senior Financial Analyst", "Accountant", "Controller"):
                member(acc, "SG_Finance_RW")
        elif dept == "Sales":
            member(acc, "SG_Sales_CRM")
            if rng.random() < 0.4:
                member(acc, "SG_ERP_Users")
        elif dept == "Marketing":
            member(acc, "SG_Marketing_Web")
            if rng.random() < 0.5:
                member(acc, "SG_Sales_CRM")
        elif dept == "IT":
            if boss or title in ("IT Administrator", "Systems Engineer", "Network Engineer"):
                member(acc, "SG_IT_Admins")
            if title in ("IT Administrator", "Systems Engineer") and rng.random() < 0.5:
                member(acc, "SG_Server_Admins")
        elif dept == "HR":
            member(acc, "SG_ERP_Users")
            if boss or title in ("HR Specialist", "HR Business Partner"):
                member(acc, "SG_HR_Admins")
        elif dept == "Operations":
            member(acc, "SG_ERP_Users")
        elif dept == "Legal":
            member(acc, "SG_Legal_Contracts")
        elif dept == "R&D":
            member(acc, "SG_R&D_Lab")

    for pid, acc in sorted(admin_accounts.items()):
        member(acc, "SG_IT_Admins", "SG_Server_Admins")
        if rng.random() < 0.5:
            member(acc, rng.choice(["SG_SQL_Admins", "SG_Backup_Operators"]))
    for sam, _, extra in SERVICE_ACCOUNTS:
        member(service_dns[sam], "SG_Service_Accounts", extra)
    for acc in orphan_dns:
        row = accounts[acc]
        member(acc, "SG_All_Staff", f"SG_Dept_{row['department']}",
               loc_group(rng.choice(LOCATIONS)))
        if rng.random() < 0.5:
            member(acc, "SG_VPN")

    # access no rule explains (a Sales rep in HR admins, ...)
    drift_members: list[tuple[str, str]] = []
    for dept, cn in (("Sales", "SG_HR_Admins"), ("Marketing", "SG_Finance_RW"),
                     ("R&D", "SG_IT_Admins")):
        (pid,) = pick(1, owned, lambda p, d=dept: p["department"] == d and p["status"] == "active")
        member(account_of[pid], cn)
        drift_members.append((pid, cn))
    # the project group with a quote and a semicolon in its name, and the
    # legacy group that disappears on day2
    candidates = sorted(pid for pid in owned if persons[pid]["status"] == "active")
    oneil_members = sorted(rng.sample(candidates, 5))
    for pid in oneil_members:
        member(account_of[pid], "SG_O'Neil;Project")
    intranet_members = sorted(rng.sample(candidates, 7))
    for pid in intranet_members:
        member(account_of[pid], DELETED_GROUP)
    member(orphan_dns[1], DELETED_GROUP)
    info.update(drift_members=drift_members, oneil_members=oneil_members)

    # ----------------------------------------------------------------- day 2
    persons2 = copy.deepcopy(persons)
    accounts2 = copy.deepcopy(accounts)
    groups2 = dict(groups)
    memberships2 = set(memberships)
    id_matched_active = lambda p: (  # noqa: E731
        p["status"] == "active" and p["employee_id"] in account_of
        and accounts[account_of[p["employee_id"]]]["employee_id"] == p["employee_id"]
    )

    joiners = []
    for i, (first, last) in enumerate(DAY2_JOINERS):
        pid = f"{301 + i:06d}"
        dept = rng.choice(DEPARTMENTS)
        p = person(pid, first, last, dept, rng.choice(TITLES[dept]), managers[dept],
                   rng.choices(LOCATIONS, LOCATION_WEIGHTS)[0])
        p["start_date"] = DAY2
        p["email"] = emails.alloc(first, last)
        persons2[pid] = p
        joiners.append(pid)

    movers = pick(4, persons, id_matched_active)
    mover_changes = {}
    for pid in movers:
        p = persons2[pid]
        new_dept = rng.choice([d for d in DEPARTMENTS if d != p["department"]])
        old = (p["department"], p["title"], p["manager_id"])
        p["department"], p["title"] = new_dept, rng.choice(TITLES[new_dept])
        p["manager_id"] = managers[new_dept]
        mover_changes[pid] = (old, (p["department"], p["title"], p["manager_id"]))

    leavers = pick(3, persons, id_matched_active)
    for pid in leavers:
        persons2[pid]["status"] = "terminated"
        persons2[pid]["end_date"] = DAY1

    removed = pick(2, persons, id_matched_active)
    for pid in removed:
        del persons2[pid]

    (rehire,) = sorted(rng.sample(terminated_with_account, 1))
    old_rehire = dict(persons[rehire])
    persons2[rehire].update(status="active", start_date=DAY2, end_date="")

    renamed_dn = gdn[RENAMED_GROUP[0]]
    groups2[renamed_dn] = RENAMED_GROUP[1]
    deleted_group_dn = gdn[DELETED_GROUP]
    del groups2[deleted_group_dn]

    deleted_orphan = rng.choice(orphan_dns[1:])  # keep the "Last\, First" one
    deleted_service = service_dns[rng.choice(sorted(service_dns))]
    deleted_accounts = sorted([deleted_orphan, deleted_service])
    for dn in deleted_accounts:
        del accounts2[dn]
    cascaded = sorted(m for m in memberships2
                      if m[0] in deleted_accounts or m[1] == deleted_group_dn)
    memberships2 -= set(cascaded)

    churn_groups = ["SG_VPN", "SG_Printers", "SG_ERP_Users"]
    removed_members = []
    has_churn = lambda p: id_matched_active(p) and any(  # noqa: E731
        (account_of[p["employee_id"]], gdn[cn]) in memberships2 for cn in churn_groups)
    for pid in pick(3, owned, has_churn):
        acc = account_of[pid]
        have = sorted(cn for cn in churn_groups if (acc, gdn[cn]) in memberships2)
        cn = rng.choice(have)
        memberships2.remove((acc, gdn[cn]))
        removed_members.append((pid, cn))
    added_members = []
    for pid in pick(3, owned, id_matched_active):
        acc = account_of[pid]
        missing = sorted(cn for cn in churn_groups + ["SG_O'Neil;Project"]
                         if (acc, gdn[cn]) not in memberships2)
        cn = rng.choice(missing)
        memberships2.add((acc, gdn[cn]))
        added_members.append((pid, cn))

    info.update(joiners=joiners, movers=movers, mover_changes=mover_changes, leavers=leavers,
                removed=removed, rehire=rehire, old_rehire=old_rehire,
                renamed_group=(renamed_dn, *RENAMED_GROUP), deleted_group=deleted_group_dn,
                deleted_accounts=deleted_accounts, cascaded=cascaded,
                removed_members=removed_members, added_members=added_members)

    # ------------------------------------------------------------ incremental
    inc_rows: list[dict[str, str]] = []
    new_ids = ["000306", "000307", "000308"]
    new_rows = {}
    for pid, (first, last) in zip(new_ids, INCREMENTAL_NEW):
        dept = rng.choice(DEPARTMENTS)
        p = person(pid, first, last, dept, rng.choice(TITLES[dept]), managers[dept],
                   rng.choices(LOCATIONS, LOCATION_WEIGHTS)[0])
        p["start_date"] = "2026-12-01"
        p["email"] = emails.alloc(first, last)
        new_rows[pid] = p
    inc_title, inc_dept = pick(2, persons, id_matched_active)
    p_title = dict(persons2[inc_title])
    p_title["title"] = rng.choice(
        sorted(set(TITLES[p_title["department"]]) - {p_title["title"]}))
    p_dept = dict(persons2[inc_dept])
    p_dept["department"] = rng.choice([d for d in DEPARTMENTS if d != p_dept["department"]])
    p_dept["title"] = rng.choice(TITLES[p_dept["department"]])
    p_dept["manager_id"] = managers[p_dept["department"]]
    # HR purges an old terminated record (one without an AD account)
    inc_delete = rng.choice([pid for pid in terminated if pid not in terminated_with_account])
    delete_row = {c: "" for c in HR_COLUMNS}
    delete_row["employee_id"] = inc_delete
    missing_row = {c: "" for c in HR_COLUMNS}
    missing_row["employee_id"] = MISSING_DELETE_KEY
    inc_rows = [new_rows["000306"], new_rows["000307"], p_title, p_dept, delete_row,
                new_rows["000308"], missing_row]
    info.update(inc_inserts=new_ids[:2], inc_upsert=new_ids[2], inc_title=inc_title,
                inc_dept=inc_dept, inc_delete=inc_delete, inc_title_row=p_title,
                inc_dept_row=p_dept)

    # ------------------------------------------------------------ assignments
    stable = lambda p: p["status"] == "active"  # noqa: E731
    (fin,) = pick(1, persons, lambda p: stable(p) and p["department"] == "Finance")
    (ops,) = pick(1, persons, lambda p: stable(p) and p["department"] == "Operations")
    (hr,) = pick(1, persons, lambda p: stable(p) and p["department"] == "HR")
    (anyone,) = pick(1, persons, stable)
    (sales,) = pick(1, persons, lambda p: stable(p) and p["department"] == "Sales")
    (it,) = pick(1, persons, lambda p: stable(p) and p["department"] == "IT")
    (mkt,) = pick(1, persons, lambda p: stable(p) and p["department"] == "Marketing")
    assignments = sorted([
        [fin, "finance_reader", "2024-01-01", ""],
        [fin, "erp_user", "2027-01-01", ""],
        [ops, "erp_user", "2025-03-01", "2025-12-31"],
        [hr, "hr_admin", "2023-06-15", ""],
        [anyone, "vpn_user", "2026-01-01", "2026-12-31"],
        [sales, "sales_crm", "2022-02-01", "2024-01-31"],
        [it, "it_admin", "2025-09-01", ""],
        [mkt, "sales_crm", "2026-11-01", ""],
    ])
    info["assignments"] = assignments

    # ---------------------------------------------------------------- output
    def hr_csv(ps: dict[str, dict[str, str]]) -> str:
        return to_csv(HR_COLUMNS, [[ps[k][c] for c in HR_COLUMNS] for k in sorted(ps)])

    def acc_csv(accs: dict[str, dict[str, str]]) -> str:
        return to_csv(ACCOUNT_COLUMNS, [[accs[k][c] for c in ACCOUNT_COLUMNS]
                                        for k in sorted(accs)])

    def grp_csv(gs: dict[str, str]) -> str:
        return to_csv(GROUP_COLUMNS, [[k, gs[k]] for k in sorted(gs)])

    def mem_csv(ms: set[tuple[str, str]]) -> str:
        return to_csv(MEMBERSHIP_COLUMNS, [list(m) for m in sorted(ms)])

    info.update(persons=persons, persons2=persons2, accounts=accounts, accounts2=accounts2,
                groups=groups, groups2=groups2, memberships=memberships,
                memberships2=memberships2, tags=tags, owned=owned)
    files = {
        "day1/hr/persons.csv": hr_csv(persons),
        "day1/ad/accounts.csv": acc_csv(accounts),
        "day1/ad/groups.csv": grp_csv(groups),
        "day1/ad/memberships.csv": mem_csv(memberships),
        "day2/hr/persons.csv": hr_csv(persons2),
        "day2/ad/accounts.csv": acc_csv(accounts2),
        "day2/ad/groups.csv": grp_csv(groups2),
        "day2/ad/memberships.csv": mem_csv(memberships2),
        "incremental/hr/persons.csv": to_csv(
            INCREMENTAL_COLUMNS,
            [[cmd] + [row[c] for c in HR_COLUMNS]
             for cmd, row in zip(INCREMENTAL_COMMANDS, inc_rows)]),
        "requests/assignments.csv": to_csv(ASSIGNMENT_COLUMNS, assignments),
    }
    files["README.md"] = readme(files, info)
    return files, info


# ----------------------------------------------------------------------------
# README


def readme(files: dict[str, str], info: dict) -> str:
    P, P2, A = info["persons"], info["persons2"], info["accounts"]
    acc_of = info["account_of"]

    def name(pid: str, ps=None) -> str:
        p = (ps or P).get(pid) or P2[pid]
        return f"{p['first_name']} {p['last_name']}"

    def sam(pid: str) -> str:
        return A[acc_of[pid]]["sam_account_name"]

    def ids(xs) -> str:
        return ", ".join(f"`{x}`" for x in xs)

    def rows(path: str) -> int:
        return files[path].count("\n") - 1  # no embedded newlines in this dataset

    out: list[str] = []
    w = out.append
    w("# contoso demo dataset\n")
    w("A small, fictitious company (~200 people, 8 departments, 5 sites) exported from its HR "
      "system and its Active Directory on two consecutive days, plus an incremental HR "
      "change set and a list of manual role requests. Every file in this directory except "
      "`generate.py` is generated: do not edit them by hand.\n")
    w("```sh")
    w("python3 datasets/contoso/generate.py          # regenerate (run from the repo root)")
    w("python3 datasets/contoso/generate.py --check  # verify files on disk, write nothing")
    w("```\n")
    w(f"Standard-library Python 3.11, `random.Random({SEED})`, sorted iteration only: the "
      "output is byte-identical from run to run. CSV: UTF-8 without BOM, `\\n` line ends, "
      "header row, minimal quoting (`csv.QUOTE_MINIMAL`), no embedded newlines, empty "
      "string = no value. Each file is sorted by its key. "
      f"Day 1 is the export of {DAY1}, day 2 the export of {DAY2}.\n")

    w("## Files\n")
    w("| file | rows | key | content |")
    w("|---|---:|---|---|")
    desc = {
        "day1/hr/persons.csv": ("employee_id", "HR export, day 1: " + ",".join(HR_COLUMNS)),
        "day1/ad/accounts.csv": ("dn", "AD user objects, day 1: " + ",".join(ACCOUNT_COLUMNS)),
        "day1/ad/groups.csv": ("dn", "AD groups, day 1: dn,cn"),
        "day1/ad/memberships.csv": ("(account_dn, group_dn)", "AD group members, day 1"),
        "day2/hr/persons.csv": ("employee_id", "full HR export, day 2"),
        "day2/ad/accounts.csv": ("dn", "full AD user export, day 2"),
        "day2/ad/groups.csv": ("dn", "full AD group export, day 2"),
        "day2/ad/memberships.csv": ("(account_dn, group_dn)", "full AD membership export, day 2"),
        "incremental/hr/persons.csv": ("employee_id", "HR change set on top of day 2; first "
                                       "column `command` = insert/update/delete, any case"),
        "requests/assignments.csv": ("(owner_key, role, start_date)", "manual role "
                                     "assignments: owner_key,role,start_date,end_date"),
    }
    for path, (key, text) in desc.items():
        w(f"| `{path}` | {rows(path)} | {key} | {text} |")
    w("")
    w("Columns: `status` is `active`, `suspended` or `terminated`; dates are `YYYY-MM-DD`; "
      "`manager_id` is an `employee_id` (empty for the CEO); `user_account_control` is the AD "
      "flag word: `512` enabled, `514` disabled (512 + ACCOUNTDISABLE), `66048` enabled with "
      "password-never-expires (service accounts). Account `dn`s are escaped per RFC 4514 "
      "(`CN=Hartmann\\, Klaus,...`, `CN=SG_O'Neil\\;Project,...`); `cn` and the other columns "
      "hold the plain value.\n")

    w("## Day 1: what is in it\n")
    st = Counter(p["status"] for p in P.values())
    w(f"- **Persons**: {len(P)} (`000101`..`000300`): {st['active']} active, "
      f"{st['suspended']} suspended, {st['terminated']} terminated. CEO `{info['ceo']}` "
      f"({name(info['ceo'])}, department Operations, empty `manager_id`); one manager per "
      "department reporting to the CEO: " + ", ".join(
          f"{d} `{m}`" for d, m in info["managers"].items()) + "; every other person reports "
      "to their department manager.")
    w(f"- **Terminated** (end_date in the past): {ids(info['terminated'])}; "
      f"{ids(info['terminated_with_account'])} still have a disabled AD account (514, "
      "`OU=Disabled Users`), the others have none.")
    w(f"- **Suspended**: {ids(info['suspended'])}; the AD accounts of "
      f"{ids(info['suspended_disabled'])} are already disabled (514), the others are still "
      "enabled (512).")
    w(f"- **Contractors** (active, end_date in 2027): {ids(info['contractors'])}.")
    w(f"- **Joiners awaiting provisioning** (active, started 2026-09/10, no AD account): "
      f"{ids(info['no_account'])}.")
    a, b = info["ambiguous"]
    w(f"- **Ambiguous e-mail**: `{a}` and `{b}` are two different people both named "
      f"{name(a)} in {P[a]['department']} and {P[b]['department']}, and HR gave both "
      f"`{P[a]['email']}`. This is the only duplicated e-mail. `{a}` has account "
      f"`{sam(a)}` with `employee_id` set; account `{sam(b)}` (dn `{acc_of[b]}`) has an empty "
      f"`employee_id` and mail `{A[acc_of[b]]['mail']}`, which matches both persons: a "
      "correlation by mail cannot decide.")
    dd = info["email_dedupe"]
    w(f"- **E-mail de-duplication**: `{dd[0]}` {name(dd[0])} has `{P[dd[0]]['email']}` and "
      f"`{dd[1]}` {name(dd[1])} has `{P[dd[1]]['email']}` (same ASCII fold).")
    w("- **Accounts correlated by mail only** (empty `employee_id`, mail is the HR e-mail):")
    w("")
    w("  | employee_id | person | sam_account_name | mail in AD | note |")
    w("  |---|---|---|---|---|")
    for pid in sorted(info["mail_only_case"] + info["mail_only_exact"]):
        note = "different case: needs lower()" if pid in info["mail_only_case"] else "exact"
        w(f"  | `{pid}` | {name(pid)} | `{sam(pid)}` | `{A[acc_of[pid]]['mail']}` | {note} |")
    w("")
    w("- **Drifted accounts** (matched by `employee_id`, AD differs from HR, so a first run "
      "emits modifications):")
    for pid in info["drift_dept"]:
        w(f"  - `{pid}` `{sam(pid)}`: AD department `{A[acc_of[pid]]['department']}`, HR "
          f"`{P[pid]['department']}`")
    for pid in info["drift_display"]:
        w(f"  - `{pid}` `{sam(pid)}`: AD display_name `{A[acc_of[pid]]['display_name']}`, HR "
          f"`{name(pid)}`")
    w("- **Admin accounts** (`OU=Admins`, `adm_` + owner's sam, no employee_id, no mail): " +
      ", ".join(f"`{A[dn]['sam_account_name']}` (owner `{pid}`)"
                for pid, dn in sorted(info["admin_accounts"].items())) + ".")
    w("- **Service accounts** (`OU=Service Accounts`, no employee_id, no mail): " +
      ", ".join(f"`{s}`" for s in sorted(info["service_dns"])) + ".")
    w("- **Orphans** (no employee_id, mail matching nobody in HR): " +
      ", ".join(f"`{A[dn]['sam_account_name']}` (`{A[dn]['mail']}`)"
                for dn in info["orphan_dns"]) + ".")
    w("- **Unexplained memberships** (no rule would grant them): " + ", ".join(
        f"`{pid}` ({P[pid]['department']}, `{sam(pid)}`) in `{cn}`"
        for pid, cn in info["drift_members"]) + ".")
    w("- **Awkward values**: department `R&D` (group `SG_Dept_R&D`); titles `Director, Finance` "
      "(comma) and `Head of \"Special Projects\"` (double quote); location `São Paulo`, "
      "`Zürich`; group `SG_O'Neil;Project` (quote + semicolon, members " +
      ids(info["oneil_members"]) + "); names with non-ASCII letters and `O'Brien`, "
      "`O'Connor`, `van der Berg`, `Smith-Jones`.\n")

    w("## Day 1 → day 2\n")
    w("Day 2 is a full export of both systems. Everything not listed here is byte-for-byte "
      "identical (same lines) between day 1 and day 2. AD is *not* updated for HR changes "
      "(that is the provisioning engine's job).\n")
    w("| change | ids | detail |")
    w("|---|---|---|")
    w(f"| joiners (new HR rows) | {ids(info['joiners'])} | active, start_date {DAY2}, no AD "
      "account: " + "; ".join(f"`{pid}` {name(pid, P2)} ({P2[pid]['department']})"
                              for pid in info["joiners"]) + " |")
    for pid in info["movers"]:
        (od, ot, om), (nd, nt, nm) = info["mover_changes"][pid]
        w(f"| mover | `{pid}` | {name(pid)} (`{sam(pid)}`): {od} / {ot} → {nd} / {nt}, "
          f"manager `{om}` → `{nm}`; AD still shows {od} and the old groups |")
    w(f"| leavers | {ids(info['leavers'])} | status terminated, end_date {DAY1}; AD accounts "
      "still enabled (512): " + ", ".join(f"`{sam(pid)}`" for pid in info["leavers"]) + " |")
    w(f"| removed from HR | {ids(info['removed'])} | rows gone from the HR export; AD accounts "
      "unchanged, now without owner: " + ", ".join(f"`{sam(pid)}`" for pid in info["removed"])
      + " |")
    r, o = info["rehire"], info["old_rehire"]
    w(f"| rehire | `{r}` | {name(r)}: terminated (end_date {o['end_date']}) → active, "
      f"start_date {DAY2}, end_date empty; AD account `{sam(r)}` still disabled (514) in "
      "`OU=Disabled Users` |")
    gdn_, old_cn, new_cn = info["renamed_group"]
    w(f"| group renamed | `{gdn_}` | cn `{old_cn}` → `{new_cn}`, same dn (value update; "
      "memberships unchanged) |")
    w(f"| group deleted | `{info['deleted_group']}` | and its "
      f"{sum(1 for m in info['cascaded'] if m[1] == info['deleted_group'])} memberships |")
    for dn in info["deleted_accounts"]:
        n = sum(1 for m in info["cascaded"] if m[0] == dn)
        w(f"| account deleted | `{dn}` | `{A[dn]['sam_account_name']}` and its {n} memberships |")
    for pid, cn in info["removed_members"]:
        w(f"| membership removed | `{pid}` | `{acc_of[pid]}` leaves `{cn}` |")
    for pid, cn in info["added_members"]:
        w(f"| membership added | `{pid}` | `{acc_of[pid]}` joins `{cn}` |")
    w("")
    cnt = lambda path: rows(path)  # noqa: E731
    w(f"Row counts day 1 → day 2: persons {cnt('day1/hr/persons.csv')} → "
      f"{cnt('day2/hr/persons.csv')}, accounts {cnt('day1/ad/accounts.csv')} → "
      f"{cnt('day2/ad/accounts.csv')}, groups {cnt('day1/ad/groups.csv')} → "
      f"{cnt('day2/ad/groups.csv')}, memberships {cnt('day1/ad/memberships.csv')} → "
      f"{cnt('day2/ad/memberships.csv')}.\n")

    w("## Incremental change set (on top of day 2)\n")
    w("`incremental/hr/persons.csv`, in file order:\n")
    w("| command | employee_id | meaning |")
    w("|---|---|---|")
    t, d = info["inc_title_row"], info["inc_dept_row"]
    w(f"| `insert` | `000306` | new joiner {INCREMENTAL_NEW[0][0]} {INCREMENTAL_NEW[0][1]} |")
    w(f"| `Insert` | `000307` | new joiner {INCREMENTAL_NEW[1][0]} {INCREMENTAL_NEW[1][1]} |")
    w(f"| `update` | `{t['employee_id']}` | title `{P2[t['employee_id']]['title']}` → "
      f"`{t['title']}` |")
    w(f"| `Update` | `{d['employee_id']}` | department/title `{P2[d['employee_id']]['department']}"
      f"` / `{P2[d['employee_id']]['title']}` → `{d['department']}` / `{d['title']}` (manager "
      f"`{d['manager_id']}`) |")
    w(f"| `delete` | `{info['inc_delete']}` | existing (terminated) person removed; only the key "
      "is filled |")
    w(f"| `update` | `000308` | key absent from day 2: an upsert that inserts "
      f"{INCREMENTAL_NEW[2][0]} {INCREMENTAL_NEW[2][1]} |")
    w(f"| `Delete` | `{MISSING_DELETE_KEY}` | key absent: ignored |")
    w("")
    n2 = len(P2)
    w(f"Applying it to day 2 ({n2} persons) gives {n2 + 3 - 1} persons.\n")

    w("## Manual role assignments\n")
    w("`requests/assignments.csv` (roles: finance_reader, erp_user, hr_admin, vpn_user, "
      "sales_crm, it_admin); every owner is an active person present on both days:\n")
    w("| owner_key | role | start_date | end_date |")
    w("|---|---|---|---|")
    for owner, role, s, e in info["assignments"]:
        w(f"| `{owner}` | {role} | {s} | {e or '(open)'} |")
    w("")
    return "\n".join(out)


# ----------------------------------------------------------------------------
# checks


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        return header, [dict(zip(header, row, strict=True)) for row in reader]


class Checker:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def ok(self, cond: bool, what: str) -> None:
        if not cond:
            self.failures.append(what)

    def between(self, n: int, lo: int, hi: int, what: str) -> None:
        self.ok(lo <= n <= hi, f"{what}: {n} not in [{lo}, {hi}]")


def check(root: Path) -> int:
    files, info = generate()
    c = Checker()

    # 1. byte identity with a fresh in-memory generation (determinism, up to date)
    on_disk = sorted(
        str(p.relative_to(root)) for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.name != "generate.py"
    )
    c.ok(on_disk == sorted(files), f"file set differs: {on_disk} vs {sorted(files)}")
    for rel, content in sorted(files.items()):
        path = root / rel
        c.ok(path.exists() and path.read_bytes() == content.encode("utf-8"),
             f"{rel}: differs from a fresh generation")
    if c.failures:
        return report(c)

    # 2. parse every CSV back
    data = {}
    expected_headers = {
        "hr/persons.csv": HR_COLUMNS, "ad/accounts.csv": ACCOUNT_COLUMNS,
        "ad/groups.csv": GROUP_COLUMNS, "ad/memberships.csv": MEMBERSHIP_COLUMNS,
    }
    for day in ("day1", "day2"):
        for rel, cols in expected_headers.items():
            header, rows = read_csv(root / day / rel)
            c.ok(header == cols, f"{day}/{rel}: header {header}")
            data[f"{day}/{rel}"] = rows
    header, inc = read_csv(root / "incremental/hr/persons.csv")
    c.ok(header == INCREMENTAL_COLUMNS, f"incremental header {header}")
    header, asg = read_csv(root / "requests/assignments.csv")
    c.ok(header == ASSIGNMENT_COLUMNS, f"assignments header {header}")

    summary = {}
    for day in ("day1", "day2"):
        persons = {r["employee_id"]: r for r in data[f"{day}/hr/persons.csv"]}
        accounts = {r["dn"]: r for r in data[f"{day}/ad/accounts.csv"]}
        groups = {r["dn"]: r for r in data[f"{day}/ad/groups.csv"]}
        mems = [(r["account_dn"], r["group_dn"]) for r in data[f"{day}/ad/memberships.csv"]]
        # unique keys
        c.ok(len(persons) == len(data[f"{day}/hr/persons.csv"]), f"{day}: duplicate employee_id")
        c.ok(len(accounts) == len(data[f"{day}/ad/accounts.csv"]), f"{day}: duplicate account dn")
        sams = [r["sam_account_name"] for r in accounts.values()]
        c.ok(len(set(s.lower() for s in sams)) == len(sams), f"{day}: duplicate sam")
        c.ok(all(len(s) <= 20 for s in sams), f"{day}: sam longer than 20")
        c.ok(len(groups) == len(data[f"{day}/ad/groups.csv"]), f"{day}: duplicate group dn")
        c.ok(len({g["cn"] for g in groups.values()}) == len(groups), f"{day}: duplicate cn")
        c.ok(len(set(mems)) == len(mems), f"{day}: duplicate membership")
        # referential integrity
        c.ok(all(a in accounts for a, _ in mems), f"{day}: membership to unknown account")
        c.ok(all(g in groups for _, g in mems), f"{day}: membership to unknown group")
        roots = [p for p in persons.values() if not p["manager_id"]]
        c.ok(len(roots) == 1, f"{day}: {len(roots)} persons without manager")
        c.ok(all(p["manager_id"] in persons for p in persons.values() if p["manager_id"]),
             f"{day}: dangling manager_id")
        c.ok(all(p["employee_id"].isdigit() and len(p["employee_id"]) == 6
                 for p in persons.values()), f"{day}: bad employee_id")
        c.ok({p["department"] for p in persons.values()} == set(DEPARTMENTS),
             f"{day}: departments")
        c.ok({p["location"] for p in persons.values()} == set(LOCATIONS), f"{day}: locations")
        c.ok(all(p["status"] in ("active", "suspended", "terminated")
                 for p in persons.values()), f"{day}: status")
        for p in persons.values():
            for col in ("start_date", "end_date"):
                if p[col]:
                    dt.date.fromisoformat(p[col])
            if p["status"] == "terminated":
                c.ok(p["end_date"] and p["end_date"] <= DAY1, f"{day}: terminated end_date")
            if p["end_date"]:
                c.ok(p["start_date"] <= p["end_date"], f"{day}: end before start")
        # e-mails: exactly one address shared, by exactly two persons
        mail_counts = Counter(p["email"].lower() for p in persons.values())
        dups = {m: n for m, n in mail_counts.items() if n > 1}
        c.ok(list(dups.values()) == [2], f"{day}: duplicated e-mails {dups}")
        c.ok(all(p["email"].isascii() and p["email"] == p["email"].lower()
                 for p in persons.values()), f"{day}: e-mail not lower ASCII")
        # account categories
        by_mail = defaultdict(list)
        for p in persons.values():
            by_mail[p["email"].lower()].append(p["employee_id"])
        cats = Counter()
        for a in accounts.values():
            sam = a["sam_account_name"]
            if sam.startswith("svc_"):
                cats["service"] += 1
                c.ok(not a["employee_id"] and ",OU=Service Accounts," in a["dn"], f"svc {sam}")
            elif sam.startswith("adm_"):
                cats["admin"] += 1
                c.ok(not a["employee_id"] and not a["mail"] and ",OU=Admins," in a["dn"],
                     f"adm {sam}")
            elif a["employee_id"]:
                p = persons.get(a["employee_id"])
                if p is None:
                    cats["owner_gone"] += 1
                    continue
                cats[f"by_id_{p['status']}"] += 1
                if day == "day1" and p["status"] == "terminated":
                    c.ok(a["user_account_control"] == UAC_DISABLED, f"{sam} enabled")
                if (a["department"], a["display_name"]) != (
                        p["department"], f"{p['first_name']} {p['last_name']}"):
                    cats["by_id_drifted"] += 1
            else:
                matches = by_mail.get(a["mail"].lower(), [])
                if len(matches) == 1:
                    cats["by_mail"] += 1
                    if a["mail"] != persons[matches[0]]["email"]:
                        cats["by_mail_case"] += 1
                elif len(matches) > 1:
                    cats["by_mail_ambiguous"] += 1
                else:
                    cats["orphan"] += 1
        owned_ids = {a["employee_id"] for a in accounts.values() if a["employee_id"]}
        owned_ids |= {pid for a in accounts.values() if not a["employee_id"]
                      for pid in by_mail.get(a["mail"].lower(), [])}
        cats["person_no_account"] = sum(1 for p in persons.values()
                                        if p["status"] == "active"
                                        and p["employee_id"] not in owned_ids)
        # memberships per user account
        per_acc = Counter(a for a, _ in mems)
        users = [dn for dn, a in accounts.items()
                 if not a["sam_account_name"].startswith(("svc_", "adm_"))]
        avg = sum(per_acc[dn] for dn in users) / len(users)
        summary[day] = dict(
            persons=len(persons),
            status=dict(sorted(Counter(p["status"] for p in persons.values()).items())),
            accounts=len(accounts), groups=len(groups), memberships=len(mems),
            user_memberships=f"min {min(per_acc[d] for d in users)}, avg {avg:.2f}, "
                             f"max {max(per_acc[d] for d in users)}",
            account_categories=dict(sorted(cats.items())),
        )
        if day == "day1":
            st = Counter(p["status"] for p in persons.values())
            c.between(len(persons), 195, 205, "day1 persons")
            c.between(st["suspended"], 6, 10, "suspended")
            c.between(st["terminated"], 8, 12, "terminated")
            c.between(sum(1 for p in persons.values() if p["status"] == "active"
                          and p["end_date"]), 2, 6, "contractors")
            c.between(len(accounts), 195, 240, "day1 accounts")
            c.between(cats["by_id_active"] + cats["by_id_suspended"], 160, 190, "by employee_id")
            c.between(cats["by_id_terminated"], 5, 7, "terminated accounts")
            c.ok(cats["by_mail"] == 6 and cats["by_mail_case"] == 2, "mail-only accounts")
            c.ok(cats["by_mail_ambiguous"] == 1, "ambiguous account")
            c.ok(cats["by_id_drifted"] == 3, "drifted accounts")
            c.ok(cats["service"] == 10 and cats["admin"] == 8 and cats["orphan"] == 6,
                 "service/admin/orphan counts")
            c.between(cats["person_no_account"], 12, 18, "persons without account")
            c.between(len(groups), 28, 34, "groups")
            c.between(round(avg), 5, 8, "memberships per user account")
            titles = {p["title"] for p in persons.values()}
            c.ok("Director, Finance" in titles and 'Head of "Special Projects"' in titles,
                 "awkward titles")
            c.ok(any(g["cn"] == "SG_O'Neil;Project" for g in groups.values()), "O'Neil group")
            c.ok(any("\\," in dn for dn in accounts), "escaped comma in a dn")
            names = " ".join(p["first_name"] + " " + p["last_name"] for p in persons.values())
            for s in ("José", "Müller", "Øyvind", "Zoë", "Łukasz", "François", "Ñúñez",
                      "Dvořák", "O'Brien"):
                c.ok(s in names, f"name {s} missing")

    # 3. day1 -> day2 differences, exactly as documented
    def keyed(rows, key):
        return {key(r): r for r in rows}

    p1 = keyed(data["day1/hr/persons.csv"], lambda r: r["employee_id"])
    p2 = keyed(data["day2/hr/persons.csv"], lambda r: r["employee_id"])
    c.ok(sorted(set(p2) - set(p1)) == info["joiners"], "joiners")
    c.ok(sorted(set(p1) - set(p2)) == info["removed"], "removed persons")
    changed = sorted(k for k in set(p1) & set(p2) if p1[k] != p2[k])
    c.ok(changed == sorted(info["movers"] + info["leavers"] + [info["rehire"]]), "changed persons")
    for k in info["movers"]:
        diff = {col for col in HR_COLUMNS if p1[k][col] != p2[k][col]}
        c.ok(diff == {"department", "title", "manager_id"}, f"mover {k}: {diff}")
    for k in info["leavers"]:
        c.ok((p1[k]["status"], p2[k]["status"], p2[k]["end_date"]) == ("active", "terminated",
                                                                       DAY1), f"leaver {k}")
    r = info["rehire"]
    c.ok((p1[r]["status"], p2[r]["status"], p2[r]["end_date"]) == ("terminated", "active", ""),
         "rehire")
    for k in info["joiners"]:
        c.ok(p2[k]["status"] == "active" and p2[k]["start_date"] == DAY2, f"joiner {k}")
    a1 = keyed(data["day1/ad/accounts.csv"], lambda r: r["dn"])
    a2 = keyed(data["day2/ad/accounts.csv"], lambda r: r["dn"])
    c.ok(sorted(set(a1) - set(a2)) == info["deleted_accounts"] and set(a2) <= set(a1),
         "deleted accounts")
    c.ok(all(a1[k] == a2[k] for k in a2), "accounts changed between days")
    c.ok(not any(a["employee_id"] in info["joiners"] for a in a2.values()), "joiner has account")
    c.ok(a2[info["account_of"][r]]["user_account_control"] == UAC_DISABLED, "rehire account")
    g1 = keyed(data["day1/ad/groups.csv"], lambda r: r["dn"])
    g2 = keyed(data["day2/ad/groups.csv"], lambda r: r["dn"])
    gdn_, old_cn, new_cn = info["renamed_group"]
    c.ok(set(g1) - set(g2) == {info["deleted_group"]} and set(g2) <= set(g1), "deleted group")
    c.ok([k for k in g2 if g1[k] != g2[k]] == [gdn_] and g1[gdn_]["cn"] == old_cn
         and g2[gdn_]["cn"] == new_cn, "renamed group")
    m1 = {(r["account_dn"], r["group_dn"]) for r in data["day1/ad/memberships.csv"]}
    m2 = {(r["account_dn"], r["group_dn"]) for r in data["day2/ad/memberships.csv"]}
    acc_of = info["account_of"]
    gd = lambda cn: group_dn(cn)  # noqa: E731
    exp_removed = set(info["cascaded"]) | {(acc_of[p], gd(cn)) for p, cn in info["removed_members"]}
    exp_added = {(acc_of[p], gd(cn)) for p, cn in info["added_members"]}
    c.ok(m1 - m2 == exp_removed and len(info["removed_members"]) == 3, "removed memberships")
    c.ok(m2 - m1 == exp_added and len(exp_added) == 3, "added memberships")
    # unchanged rows are the very same lines
    for kind in ("hr/persons.csv", "ad/accounts.csv", "ad/groups.csv", "ad/memberships.csv"):
        l1 = set(files[f"day1/{kind}"].splitlines())
        l2 = set(files[f"day2/{kind}"].splitlines())
        n_changed = {"hr/persons.csv": len(changed) + len(info["removed"]),
                     "ad/accounts.csv": 2, "ad/groups.csv": 2,
                     "ad/memberships.csv": len(exp_removed)}[kind]
        c.ok(len(l1 - l2) == n_changed, f"{kind}: {len(l1 - l2)} day1 lines not in day2")

    # 4. incremental and assignments
    cmds = Counter(r["command"].lower() for r in inc)
    c.ok(cmds == Counter(insert=2, update=3, delete=2), f"incremental commands {cmds}")
    c.ok(any(r["command"] != r["command"].lower() for r in inc), "no mixed-case command")
    keys = [r["employee_id"] for r in inc]
    c.ok(len(set(keys)) == len(keys), "incremental duplicate key")
    for row in inc:
        cmd, k = row["command"].lower(), row["employee_id"]
        if cmd == "insert":
            c.ok(k not in p2, f"insert of existing {k}")
        if cmd == "delete":
            c.ok(all(not row[col] for col in HR_COLUMNS if col != "employee_id"),
                 f"delete {k} has values")
        if cmd != "delete":
            c.ok(not row["manager_id"] or row["manager_id"] in p2, f"inc manager {k}")
    c.ok([r["employee_id"] for r in inc if r["command"].lower() == "update"
          and r["employee_id"] not in p2] == [info["inc_upsert"]], "upsert row")
    c.ok([r["employee_id"] for r in inc if r["command"].lower() == "delete"
          and r["employee_id"] not in p2] == [MISSING_DELETE_KEY], "missing delete row")
    applied = dict(p2)
    for row in inc:
        if row["command"].lower() == "delete":
            applied.pop(row["employee_id"], None)
        else:
            applied[row["employee_id"]] = {col: row[col] for col in HR_COLUMNS}
    c.ok(len(applied) == len(p2) + 3 - 1, "incremental applied count")
    all_mail = Counter(p["email"] for p in applied.values())
    c.ok(sum(n - 1 for n in all_mail.values()) == 1, "incremental e-mail collision")
    c.ok(all(not p["manager_id"] or p["manager_id"] in applied for p in applied.values()),
         "incremental dangling manager")
    roles = {"finance_reader", "erp_user", "hr_admin", "vpn_user", "sales_crm", "it_admin"}
    c.between(len(asg), 6, 10, "assignments")
    for row in asg:
        c.ok(row["owner_key"] in p1 and row["owner_key"] in p2, f"assignment owner {row}")
        c.ok(row["role"] in roles, f"assignment role {row}")
        c.ok(not row["end_date"] or row["start_date"] <= row["end_date"], f"dates {row}")
    c.ok(sum(1 for r in asg if r["end_date"] == "2026-12-31") == 1, "one ending 2026-12-31")
    c.ok(any(not r["end_date"] for r in asg) and any(r["end_date"] and r["end_date"] < DAY1
                                                     for r in asg), "assignment date mix")

    # 5. README mentions every documented id
    text = files["README.md"]
    for k in (info["joiners"] + info["movers"] + info["leavers"] + info["removed"]
              + [info["rehire"]] + info["ambiguous"] + info["mail_only_case"]
              + info["mail_only_exact"] + info["deleted_accounts"]
              + [info["deleted_group"], gdn_]):
        c.ok(f"`{k}`" in text, f"README lacks {k}")

    for day, s in summary.items():
        print(f"{day}:")
        for k, v in s.items():
            print(f"  {k}: {v}")
    print(f"incremental rows: {len(inc)} {dict(cmds)}; assignments: {len(asg)}")
    return report(c)


def report(c: Checker) -> int:
    if c.failures:
        for f in c.failures:
            print("FAIL:", f)
        print(f"{len(c.failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


# ----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="verify the files on disk instead of writing them")
    args = parser.parse_args()
    if args.check:
        return check(ROOT)
    files, _ = generate()
    for rel, content in sorted(files.items()):
        path = ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8"))
        print(f"{content.count(chr(10)) - (0 if rel.endswith('.md') else 1):5d}  {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
