#!/usr/bin/env python3
"""Writes a synthetic HR export of N persons for the synchronization benchmark.

    gen_persons.py --rows 1000000 --out day1/persons.csv
    gen_persons.py --rows 1000000 --out day2/persons.csv --change 0.01

With --change F, a fraction F of the rows differs from the base file of the same --rows and
--seed: a third of it updated (title and department), a third deleted, a third new joiners.
Same arguments, same bytes.
"""
import argparse
import random

DEPARTMENTS = ["Finance", "HR", "IT", "Legal", "Marketing", "Operations", "R&D", "Sales"]
TITLES = ["Analyst", "Engineer", "Manager", "Director", "Specialist", "Assistant", "Consultant"]
FIRST = ["Ana", "Bo", "Chloé", "Dmitri", "Élise", "Farah", "Gustav", "Hana", "Ivan", "Jonas",
         "Kenji", "Lena", "Mateo", "Nia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tariq"]
LAST = ["Andersen", "Brown", "Costa", "Diallo", "Eriksen", "Fischer", "García", "Haddad", "Ito",
        "Johansson", "Kim", "Laurent", "Müller", "Nowak", "O'Brien", "Petrov", "Rossi", "Smith"]
LOCATIONS = ["Paris", "London", "New York", "Zürich", "Singapore"]
STATUSES = ["active"] * 90 + ["suspended"] * 3 + ["terminated"] * 7


def person(i, rng, variant=0):
    first = FIRST[i % len(FIRST)]
    last = LAST[(i // len(FIRST)) % len(LAST)]
    dept = DEPARTMENTS[(i + variant) % len(DEPARTMENTS)]
    title = TITLES[(i * 7 + variant) % len(TITLES)]
    status = STATUSES[i % len(STATUSES)]
    start = f"{2000 + i % 25:04d}-{1 + i % 12:02d}-{1 + i % 28:02d}"
    end = f"{2025:04d}-{1 + i % 12:02d}-{1 + i % 28:02d}" if status == "terminated" else ""
    manager = f"{max(1, i // 10):07d}" if i > 1 else ""
    email = f"{first.lower()}.{last.lower().replace(chr(39), '')}{i}@example.com"
    return [f"{i:07d}", first, last, email, dept, title, manager, status, start, end,
            LOCATIONS[i % len(LOCATIONS)]]


def quote(v):
    return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\n') else v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--change", type=float, default=0.0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    n = a.rows
    changed = int(n * a.change)
    picks = rng.sample(range(1, n + 1), changed) if changed else []
    third = changed // 3
    updated = set(picks[:third])
    deleted = set(picks[third:2 * third])
    joiners = changed - 2 * third
    with open(a.out, "w", encoding="utf-8", newline="") as f:
        f.write("employee_id,first_name,last_name,email,department,title,manager_id,status,"
                "start_date,end_date,location\n")
        for i in range(1, n + 1 + joiners):
            if i in deleted:
                continue
            row = person(i, rng, variant=1 if i in updated else 0)
            f.write(",".join(quote(v) for v in row) + "\n")


if __name__ == "__main__":
    main()
