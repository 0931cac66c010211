#!/usr/bin/env python3
"""A simple synthetic company for the role-model benchmark (issue 3).

    gen_company.py --identities 100000 --out DIR

Writes DIR/pipeline/pipeline.toml and DIR/exports/{hr,ad}/*.csv: N persons (8 departments,
5 locations, 6 titles, 95% active), about 1.02 accounts per person (5% of persons have none,
service and orphan accounts added), 13 groups by department and location plus 24 application
groups, about 4 memberships per account with some drift, and a role model of 37 roles (one per
group) over department, location and title. Same arguments, same bytes.
"""
import argparse
import os
import random

DEPTS = ["Finance", "HR", "IT", "Legal", "Marketing", "Operations", "R&D", "Sales"]
LOCS = ["Paris", "London", "New York", "Zurich", "Singapore"]
TITLES = ["Analyst", "Engineer", "Manager", "Specialist", "Assistant", "Director"]
APPS = [f"APP_{i:02d}" for i in range(24)]


def app_rule(i):
    dept = DEPTS[i % len(DEPTS)]
    title = TITLES[(i // len(DEPTS)) % len(TITLES)]
    return f"department = '{dept}' AND title = '{title}'", (dept, title)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--identities", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    n = a.identities
    for d in ("pipeline", "exports/hr", "exports/ad"):
        os.makedirs(os.path.join(a.out, d), exist_ok=True)
    app_of = {app_rule(i)[1]: APPS[i] for i in range(len(APPS))}
    with open(os.path.join(a.out, "exports/hr/persons.csv"), "w") as hr, \
         open(os.path.join(a.out, "exports/ad/accounts.csv"), "w") as acc, \
         open(os.path.join(a.out, "exports/ad/memberships.csv"), "w") as mem:
        hr.write("employee_id,first_name,last_name,email,department,title,status,location\n")
        acc.write("dn,sam_account_name,employee_id,mail,department,user_account_control\n")
        mem.write("account_dn,group_dn\n")
        for i in range(1, n + 1):
            dept = DEPTS[rng.randrange(len(DEPTS))]
            title = TITLES[rng.randrange(len(TITLES))]
            loc = LOCS[rng.randrange(len(LOCS))]
            status = "active" if rng.random() < 0.95 else "terminated"
            eid = f"{i:08d}"
            first, last = f"First{i % 997}", f"Last{i}"
            mail = f"{first.lower()}.{last.lower()}@example.com"
            hr.write(f"{eid},{first},{last},{mail},{dept},{title},{status},{loc}\n")
            if rng.random() < 0.05:
                continue  # a joiner without an account
            dn = f"CN={last}\\, {first},OU=Users,DC=example,DC=com"
            # drift: some accounts show an old department
            adept = dept if rng.random() < 0.98 else DEPTS[rng.randrange(len(DEPTS))]
            acc.write(f"\"{dn}\",u{i},{eid},{mail},{adept},512\n")
            groups = [f"G_Dept_{adept}", f"G_Loc_{loc}", "G_All"]
            if (dept, title) in app_of:
                groups.append(app_of[(dept, title)])
            if rng.random() < 0.1:
                groups += rng.sample(APPS, 1)  # access no rule explains
            for g in sorted(set(groups)):
                mem.write(f"\"{dn}\",CN={g}\n")
        for i in range(n // 100):
            acc.write(f"\"CN=orphan{i},OU=Users,DC=example,DC=com\",orphan{i},,,IT,512\n")
            acc.write(f"\"CN=svc_{i},OU=Service,DC=example,DC=com\",svc_{i},,,IT,66048\n")
    with open(os.path.join(a.out, "exports/ad/groups.csv"), "w") as g:
        g.write("dn,cn\n")
        for name in ["G_All"] + [f"G_Dept_{d}" for d in DEPTS] + [f"G_Loc_{l}" for l in LOCS] + APPS:
            g.write(f"CN={name},{name}\n")
    roles, values = [], []
    for d in DEPTS:
        roles.append((f"dept_{d.lower().replace('&', '')}", f"department = '{d}'"))
        values.append((roles[-1][0], f"CN=G_Dept_{d}"))
    for l in LOCS:
        roles.append((f"loc_{l.lower().replace(' ', '_')}", f"location = '{l}'"))
        values.append((roles[-1][0], f"CN=G_Loc_{l}"))
    for i, app in enumerate(APPS):
        roles.append((f"app_{i:02d}", app_rule(i)[0]))
        values.append((roles[-1][0], f"CN={app}"))
    roles.append(("all_staff", "status = 'active'"))
    values.append(("all_staff", "CN=G_All"))
    with open(os.path.join(a.out, "pipeline/pipeline.toml"), "w") as p:
        p.write(f'''name = "bench_company"

[connector.hr]
exports = "../exports/hr"
[connector.ad]
exports = "../exports/ad"

[[entity]]
name = "person"
connector = "hr"
file = "persons.csv"
key = "employee_id"
columns = {{ employee_id = "string", first_name = "string", last_name = "string", email = "string", department = "string", title = "string", status = "string", location = "string" }}
computed = {{ display_name = "first_name || ' ' || last_name", login = "lower(substr(first_name, 1, 1) || last_name)" }}

[[entity]]
name = "ad_account"
connector = "ad"
file = "accounts.csv"
key = "dn"
columns = {{ dn = "string", sam_account_name = "string", employee_id = "string", mail = "string", department = "string", user_account_control = "int" }}

[[entity]]
name = "ad_group"
connector = "ad"
file = "groups.csv"
key = "dn"
columns = {{ dn = "string", cn = "string" }}

[[link]]
name = "ad_member_of"
connector = "ad"
file = "memberships.csv"
from = {{ entity = "ad_account", column = "account_dn" }}
to = {{ entity = "ad_group", column = "group_dn" }}
''')
        for name, rule in roles:
            p.write(f'\n[[role]]\nname = "{name}"\nrule = "{rule}"\n')
        p.write('''
[[resource_type]]
name = "ad_user"
owner = "person"
target = "ad_account"
rule = "status = 'active'"
on_lost = "disable"
disable = { user_account_control = "514" }
create_only = ["sam_account_name"]
correlation = [ { target = "employee_id", owner = "employee_id" }, { target = "lower(mail)", owner = "lower(email)" } ]
thresholds = { max_deleted_percent = 50 }
scalars = { sam_account_name = "login", department = "department", mail = "email", employee_id = "employee_id", user_account_control = "512" }

[[resource_type.link]]
link = "ad_member_of"
managed = "rules"
values = [
''')
        for role, value in values:
            p.write(f'  {{ role = "{role}", target = "{value}" }},\n')
        p.write(''']

[[classification]]
target = "ad_account"
name = "service"
rule = "sam_account_name LIKE 'svc\\\\_%'"
protect = true

[[job]]
name = "complete"
[[job.task]]
name = "sync_hr"
type = "synchronize"
connector = "hr"
[[job.task]]
name = "sync_ad"
type = "synchronize"
connector = "ad"
depends_on = []
[[job.task]]
name = "correlation_keys"
type = "compute_correlation_keys"
depends_on = ["sync_hr", "sync_ad"]
[[job.task]]
name = "role_model"
type = "compute_role_model"
[[job.task]]
name = "classification"
type = "update_classification"
[[job.task]]
name = "orders"
type = "generate_provisioning_orders"
''')


if __name__ == "__main__":
    main()
