//! `igaflow generate --identities N [--seed S] OUT_DIR`: a synthetic company and its pipeline
//! for benchmarks and demos (issue 6).
//!
//! Layout of OUT_DIR:
//! - `pipeline/pipeline.toml`: connectors `hr`, `ad`, `erp`; about 300 roles (all staff,
//!   division, department, location and title roles, and application roles by department and
//!   grade), composite roles, manual assignments, resource types `ad_user` and `erp_user`,
//!   classification, and the jobs `complete` and `incremental`;
//! - `day1/{hr,ad,erp}`: the full exports; `day2/hr`: the next day's HR export (1% joiners,
//!   1% movers, 1% leavers); `incremental/hr`: a change set touching 0.1% of the persons;
//!   `requests/assignments.csv`: manual role assignments.
//!
//! The HR folder is chosen by `GEN_DAY` (`day1`, `day2`, `incremental`); the target systems
//! always read `day1` (their exports do not change between the days).
//!
//! The AD memberships are what the role model grants, with drift (missing and extra managed
//! groups, stale attributes), plus unmanaged project groups whose sizes follow a Zipf-like
//! law: the average account is in about 12 groups. Same N and seed → same bytes (ChaCha8).

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

const DIVISIONS: [&str; 6] = [
    "Finance",
    "Operations",
    "Technology",
    "Sales",
    "People",
    "Research",
];
const LOCATIONS: [(&str, &str); 20] = [
    ("Paris", "FR"),
    ("Lyon", "FR"),
    ("London", "GB"),
    ("Manchester", "GB"),
    ("New York", "US"),
    ("Chicago", "US"),
    ("Austin", "US"),
    ("Toronto", "CA"),
    ("São Paulo", "BR"),
    ("Zürich", "CH"),
    ("Berlin", "DE"),
    ("Munich", "DE"),
    ("Madrid", "ES"),
    ("Milan", "IT"),
    ("Amsterdam", "NL"),
    ("Stockholm", "SE"),
    ("Singapore", "SG"),
    ("Tokyo", "JP"),
    ("Sydney", "AU"),
    ("Mumbai", "IN"),
];
/// Titles by grade band (1–10).
const TITLES: [(&str, u32, u32); 16] = [
    ("Assistant", 1, 2),
    ("Coordinator", 1, 3),
    ("Associate", 2, 3),
    ("Analyst", 3, 4),
    ("Engineer", 3, 5),
    ("Specialist", 4, 5),
    ("Consultant", 4, 6),
    ("Senior Analyst", 5, 6),
    ("Senior Engineer", 5, 7),
    ("Lead", 6, 7),
    ("Architect", 6, 8),
    ("Manager", 7, 8),
    ("Senior Manager", 8, 8),
    ("Director", 9, 9),
    ("Vice President", 10, 10),
    ("Principal", 8, 9),
];
const FIRST: [&str; 48] = [
    "Aarav",
    "Ada",
    "Aiko",
    "Alejandro",
    "Amara",
    "Anna",
    "Ben",
    "Carlos",
    "Chen",
    "Chloé",
    "Dario",
    "Elena",
    "Élise",
    "Emma",
    "Fatima",
    "Felix",
    "Grace",
    "Hana",
    "Hugo",
    "Ines",
    "Ivan",
    "Jamal",
    "Jana",
    "Jonas",
    "Julia",
    "Kenji",
    "Lars",
    "Leila",
    "Liam",
    "Lucía",
    "Maya",
    "Mateo",
    "Mei",
    "Nadia",
    "Noah",
    "Olga",
    "Omar",
    "Priya",
    "Rafael",
    "Sara",
    "Sofia",
    "Tariq",
    "Theo",
    "Uma",
    "Victor",
    "Yara",
    "Yusuf",
    "Zoé",
];
const LAST: [&str; 48] = [
    "Andersson",
    "Bauer",
    "Becker",
    "Bianchi",
    "Costa",
    "Dubois",
    "Diallo",
    "Fischer",
    "García",
    "Hansen",
    "Hoffmann",
    "Ivanova",
    "Jensen",
    "Johansson",
    "Kowalski",
    "Kumar",
    "Laurent",
    "Lefebvre",
    "Martin",
    "Meyer",
    "Moreau",
    "Müller",
    "Nakamura",
    "Nguyen",
    "Novak",
    "O'Brien",
    "Okafor",
    "Olsen",
    "Petrov",
    "Popescu",
    "Rossi",
    "Santos",
    "Schmidt",
    "Silva",
    "Singh",
    "Smith",
    "Suzuki",
    "Tanaka",
    "Van Dijk",
    "Wagner",
    "Wang",
    "Weber",
    "Williams",
    "Wójcik",
    "Yamamoto",
    "Yilmaz",
    "Zhang",
    "Zimmermann",
];
const DEPARTMENTS_PER_DIVISION: usize = 7;
const APP_ROLES: usize = 215;
const COMPOSITES: usize = 10;
const DAY2: &str = "2026-11-23";

/// One person of the HR export.
#[derive(Clone)]
struct Person {
    id: u32,
    first: &'static str,
    last: &'static str,
    email: String,
    division: usize,
    department: usize,
    title: usize,
    grade: u32,
    location: usize,
    manager: Option<u32>,
    status: &'static str,
    start: String,
    end: Option<String>,
}

impl Person {
    fn eid(&self) -> String {
        format!("E{:07}", self.id)
    }
    fn department_name(&self) -> String {
        department_name(self.department)
    }
}

fn department_name(d: usize) -> String {
    format!(
        "{}-{}",
        DIVISIONS[d / DEPARTMENTS_PER_DIVISION],
        d % DEPARTMENTS_PER_DIVISION + 1
    )
}

/// An application role: granted to a department's persons from a grade up.
struct AppRole {
    department: usize,
    min_grade: u32,
}

struct Model {
    apps: Vec<AppRole>,
    /// Composite roles: a division and a grade, bundling application roles.
    composites: Vec<(usize, u32, Vec<usize>)>,
}

impl Model {
    fn new(rng: &mut ChaCha8Rng) -> Self {
        let departments = DIVISIONS.len() * DEPARTMENTS_PER_DIVISION;
        let apps: Vec<AppRole> = (0..APP_ROLES)
            .map(|i| AppRole {
                department: i % departments,
                min_grade: rng.random_range(1..=8),
            })
            .collect();
        let composites = (0..COMPOSITES)
            .map(|c| {
                let division = c % DIVISIONS.len();
                let roles = (0..4)
                    .map(|_| rng.random_range(0..APP_ROLES))
                    .collect::<Vec<_>>();
                (division, 7 + (c as u32 % 3), roles)
            })
            .collect();
        Self { apps, composites }
    }

    /// The managed groups the role model grants a person (indices into the group list).
    fn groups_of(&self, p: &Person) -> Vec<String> {
        let mut g = Vec::with_capacity(10);
        if p.status == "terminated" {
            return g;
        }
        g.push("G_All_Staff".to_string());
        g.push(format!("G_Div_{}", DIVISIONS[p.division]));
        g.push(format!("G_Dept_{}", p.department_name()));
        g.push(format!(
            "G_Loc_{}",
            LOCATIONS[p.location].0.replace(' ', "_")
        ));
        g.push(format!("G_Title_{}", TITLES[p.title].0.replace(' ', "_")));
        let mut apps: Vec<usize> = self
            .apps
            .iter()
            .enumerate()
            .filter(|(_, a)| a.department == p.department && p.grade >= a.min_grade)
            .map(|(i, _)| i)
            .collect();
        for (division, grade, roles) in &self.composites {
            if p.division == *division && p.grade >= *grade {
                apps.extend(roles);
            }
        }
        apps.sort_unstable();
        apps.dedup();
        g.extend(apps.into_iter().map(|i| format!("G_App_{i:03}")));
        g
    }
}

fn group_dn(cn: &str) -> String {
    format!("CN={cn},OU=Groups,DC=corp,DC=example")
}

fn user_dn(p: &Person) -> String {
    format!(
        "CN={} {} {},OU=Users,DC=corp,DC=example",
        p.first,
        p.last,
        p.eid()
    )
}

fn date(rng: &mut ChaCha8Rng, from_year: i32, to_year: i32) -> String {
    format!(
        "{}-{:02}-{:02}",
        rng.random_range(from_year..=to_year),
        rng.random_range(1..=12),
        rng.random_range(1..=28)
    )
}

fn person(rng: &mut ChaCha8Rng, id: u32, managers: &mut [Vec<u32>]) -> Person {
    let department = rng.random_range(0..DIVISIONS.len() * DEPARTMENTS_PER_DIVISION);
    // Grades: many juniors, few executives.
    let grade = match rng.random_range(0..100) {
        0..=19 => rng.random_range(1..=2),
        20..=54 => rng.random_range(3..=4),
        55..=79 => rng.random_range(5..=6),
        80..=94 => rng.random_range(7..=8),
        95..=98 => 9,
        _ => 10,
    };
    let fitting: Vec<usize> = (0..TITLES.len())
        .filter(|&t| TITLES[t].1 <= grade && grade <= TITLES[t].2)
        .collect();
    let title = fitting[rng.random_range(0..fitting.len())];
    let first = FIRST[rng.random_range(0..FIRST.len())];
    let last = LAST[rng.random_range(0..LAST.len())];
    let email = format!(
        "{}.{}.{id}@corp.example",
        ascii(first),
        ascii(last).replace(['\'', ' '], "")
    );
    let pool = &managers[department];
    let manager = (!pool.is_empty()).then(|| pool[rng.random_range(0..pool.len())]);
    if grade >= 7 {
        managers[department].push(id);
    }
    let status = match rng.random_range(0..100) {
        0..=3 => "terminated",
        4..=5 => "suspended",
        _ => "active",
    };
    let start = date(rng, 2000, 2026);
    let end = (status == "terminated").then(|| date(rng, 2020, 2026));
    Person {
        id,
        first,
        last,
        email,
        division: department / DEPARTMENTS_PER_DIVISION,
        department,
        title,
        grade,
        location: rng.random_range(0..LOCATIONS.len()),
        manager,
        status,
        start,
        end,
    }
}

/// Lowercase ASCII form of a name for logins and emails.
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'é' | 'É' => 'e',
            'í' => 'i',
            'ó' => 'o',
            'ü' => 'u',
            'ñ' => 'n',
            'ł' => 'l',
            'ć' => 'c',
            c => c,
        })
        .collect::<String>()
        .to_lowercase()
}

struct Csv {
    writer: csv::Writer<std::io::BufWriter<std::fs::File>>,
    path: PathBuf,
}

impl Csv {
    fn create(path: PathBuf, header: &[&str]) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let file = std::fs::File::create(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let mut writer = csv::Writer::from_writer(std::io::BufWriter::with_capacity(1 << 20, file));
        writer
            .write_record(header)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e.into()))?;
        Ok(Self { writer, path })
    }

    fn row<I, T>(&mut self, fields: I) -> Result<()>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.writer
            .write_record(fields)
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e.into()))
    }

    fn finish(mut self) -> Result<()> {
        self.writer
            .flush()
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))
    }
}

const PERSON_HEADER: [&str; 14] = [
    "employee_id",
    "first_name",
    "last_name",
    "email",
    "division",
    "department",
    "title",
    "grade",
    "location",
    "country",
    "manager_id",
    "status",
    "start_date",
    "end_date",
];

fn person_row(p: &Person) -> Vec<String> {
    vec![
        p.eid(),
        p.first.to_string(),
        p.last.to_string(),
        p.email.clone(),
        DIVISIONS[p.division].to_string(),
        p.department_name(),
        TITLES[p.title].0.to_string(),
        p.grade.to_string(),
        LOCATIONS[p.location].0.to_string(),
        LOCATIONS[p.location].1.to_string(),
        p.manager.map(|m| format!("E{m:07}")).unwrap_or_default(),
        p.status.to_string(),
        p.start.clone(),
        p.end.clone().unwrap_or_default(),
    ]
}

/// What `generate` wrote, for its report.
pub struct Generated {
    pub persons: usize,
    pub accounts: usize,
    pub groups: usize,
    pub memberships: usize,
    pub erp_users: usize,
    pub roles: usize,
}

pub fn generate(n: usize, seed: u64, out: &Path) -> Result<Generated> {
    if n == 0 {
        return Err(Error::Usage("--identities must be at least 1".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let model = Model::new(&mut rng);
    let departments = DIVISIONS.len() * DEPARTMENTS_PER_DIVISION;
    let mut managers: Vec<Vec<u32>> = vec![Vec::new(); departments];
    let persons: Vec<Person> = (1..=n as u32)
        .map(|id| person(&mut rng, id, &mut managers))
        .collect();

    // HR, day 1.
    let mut hr = Csv::create(out.join("day1/hr/persons.csv"), &PERSON_HEADER)?;
    for p in &persons {
        hr.row(person_row(p))?;
    }
    hr.finish()?;

    // Groups: the managed ones, admin groups, and project groups up to about 5% of N.
    let mut managed: Vec<String> = vec!["G_All_Staff".into()];
    managed.extend(DIVISIONS.iter().map(|d| format!("G_Div_{d}")));
    managed.extend((0..departments).map(|d| format!("G_Dept_{}", department_name(d))));
    managed.extend(
        LOCATIONS
            .iter()
            .map(|(l, _)| format!("G_Loc_{}", l.replace(' ', "_"))),
    );
    managed.extend(
        TITLES
            .iter()
            .map(|(t, _, _)| format!("G_Title_{}", t.replace(' ', "_"))),
    );
    managed.extend((0..APP_ROLES).map(|i| format!("G_App_{i:03}")));
    let admin_groups: Vec<String> = (0..8).map(|i| format!("G_Admin_{i}")).collect();
    let projects = (n / 20)
        .max(50)
        .saturating_sub(managed.len() + admin_groups.len())
        .max(20);
    let project_groups: Vec<String> = (0..projects).map(|i| format!("G_Prj_{i:05}")).collect();
    let mut groups = Csv::create(out.join("day1/ad/groups.csv"), &["dn", "cn"])?;
    for g in managed.iter().chain(&admin_groups).chain(&project_groups) {
        groups.row([group_dn(g), g.clone()])?;
    }
    groups.finish()?;
    let group_count = managed.len() + admin_groups.len() + project_groups.len();

    // Accounts and memberships.
    let mut accounts = Csv::create(
        out.join("day1/ad/accounts.csv"),
        &[
            "dn",
            "sam_account_name",
            "employee_id",
            "mail",
            "display_name",
            "department",
            "user_account_control",
        ],
    )?;
    let mut members = Csv::create(
        out.join("day1/ad/memberships.csv"),
        &["account_dn", "group_dn"],
    )?;
    let (mut n_accounts, mut n_members) = (0, 0);
    // Project group popularity: weight 1/(rank+1) (Zipf-like), sampled by inverse CDF.
    let weights: Vec<f64> = (0..projects).map(|r| 1.0 / (r as f64 + 1.0)).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(projects);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let project = |rng: &mut ChaCha8Rng| -> &String {
        let u: f64 = rng.random();
        let i = cdf.partition_point(|&c| c < u).min(projects - 1);
        &project_groups[i]
    };
    for p in &persons {
        // 3% have no account yet (joiners: Added orders).
        if rng.random_range(0..100) < 3 {
            continue;
        }
        let dn = user_dn(p);
        let drift_dept = rng.random_range(0..100) < 2;
        let department = if drift_dept {
            department_name(rng.random_range(0..departments))
        } else {
            p.department_name()
        };
        let display = if rng.random_range(0..100) < 1 {
            format!("{} {}", p.first, p.last.to_uppercase())
        } else {
            format!("{} {}", p.first, p.last)
        };
        // 2% lost their employee id in AD: correlated by mail.
        let eid = if rng.random_range(0..100) < 2 {
            String::new()
        } else {
            p.eid()
        };
        let uac = if p.status == "terminated" && rng.random_range(0..100) < 80 {
            "514"
        } else {
            "512"
        };
        accounts.row([
            dn.as_str(),
            &format!("u{}", p.eid().to_lowercase()),
            &eid,
            &p.email,
            &display,
            &department,
            uac,
        ])?;
        n_accounts += 1;
        let mut gs = model.groups_of(p);
        // Drift: a managed group missing, or one too many.
        if !gs.is_empty() && rng.random_range(0..100) < 3 {
            let i = rng.random_range(0..gs.len());
            gs.remove(i);
        }
        if rng.random_range(0..100) < 3 {
            gs.push(managed[rng.random_range(0..managed.len())].clone());
        }
        // Unmanaged project groups: 5.5 on average, skewed.
        let k = rng.random_range(0..=11);
        for _ in 0..k {
            gs.push(project(&mut rng).clone());
        }
        gs.sort_unstable();
        gs.dedup();
        for g in &gs {
            members.row([dn.as_str(), &group_dn(g)])?;
        }
        n_members += gs.len();
    }
    // Admin (6%), service (4%) and orphan (3%) accounts.
    let extra = |share: usize| n * share / 100;
    for i in 0..extra(6) {
        let owner = &persons[rng.random_range(0..n)];
        let dn = format!("CN=adm-{i:06}-{},OU=Admins,DC=corp,DC=example", owner.eid());
        accounts.row([
            dn.as_str(),
            &format!("adm-{i:06}"),
            "",
            "",
            &format!("Admin {}", owner.last),
            "",
            "512",
        ])?;
        for _ in 0..rng.random_range(1..=3) {
            members.row([
                dn.as_str(),
                &group_dn(&admin_groups[rng.random_range(0..8)]),
            ])?;
            n_members += 1;
        }
        n_accounts += 1;
    }
    for i in 0..extra(4) {
        let dn = format!("CN=svc-{i:06},OU=Services,DC=corp,DC=example");
        accounts.row([
            dn.as_str(),
            &format!("svc-{i:06}"),
            "",
            "",
            &format!("Service {i}"),
            "",
            "512",
        ])?;
        members.row([dn.as_str(), &group_dn(project(&mut rng))])?;
        n_accounts += 1;
        n_members += 1;
    }
    for i in 0..extra(3) {
        let dn = format!("CN=Former {i:06},OU=Users,DC=corp,DC=example");
        accounts.row([
            dn.as_str(),
            &format!("former{i:06}"),
            &format!("X{i:07}"),
            &format!("former.{i}@corp.example"),
            &format!("Former {i}"),
            "",
            "512",
        ])?;
        for _ in 0..rng.random_range(1..=4) {
            members.row([dn.as_str(), &group_dn(project(&mut rng))])?;
            n_members += 1;
        }
        n_accounts += 1;
    }
    accounts.finish()?;
    members.finish()?;

    // ERP: persons of Finance and Operations.
    let mut erp = Csv::create(
        out.join("day1/erp/users.csv"),
        &["login", "employee_id", "profile", "state"],
    )?;
    let mut erp_users = 0;
    for p in &persons {
        if p.division > 1 || p.status == "terminated" || rng.random_range(0..100) < 5 {
            continue;
        }
        let profile = if rng.random_range(0..100) < 2 {
            "STALE".to_string()
        } else {
            p.department_name()
        };
        erp.row([
            format!("e{}", p.id),
            p.eid(),
            profile,
            "enabled".to_string(),
        ])?;
        erp_users += 1;
    }
    erp.finish()?;

    // Manual assignments: 0.5% of the persons request an application role.
    let mut requests = Csv::create(
        out.join("requests/assignments.csv"),
        &["owner_key", "role", "start_date", "end_date"],
    )?;
    for _ in 0..(n / 200).max(1) {
        let p = &persons[rng.random_range(0..n)];
        let end = if rng.random_range(0..2) == 0 {
            date(&mut rng, 2027, 2028)
        } else {
            String::new()
        };
        requests.row([
            p.eid(),
            format!("app_{:03}", rng.random_range(0..APP_ROLES)),
            date(&mut rng, 2025, 2026),
            end,
        ])?;
    }
    requests.finish()?;

    // Day 2: 1% joiners, 1% movers, 1% leavers.
    let mut day2 = persons.clone();
    let changes = (n / 100).max(1);
    for _ in 0..changes {
        let i = rng.random_range(0..n);
        let p = &mut day2[i];
        p.department = rng.random_range(0..departments);
        p.division = p.department / DEPARTMENTS_PER_DIVISION;
    }
    for _ in 0..changes {
        let i = rng.random_range(0..n);
        let p = &mut day2[i];
        if p.status != "terminated" {
            p.status = "terminated";
            p.end = Some(DAY2.to_string());
        }
    }
    for k in 0..changes {
        let mut p = person(&mut rng, (n + 1 + k) as u32, &mut managers);
        p.status = "active";
        p.end = None;
        p.start = DAY2.to_string();
        day2.push(p);
    }
    let mut hr2 = Csv::create(out.join("day2/hr/persons.csv"), &PERSON_HEADER)?;
    for p in &day2 {
        hr2.row(person_row(p))?;
    }
    hr2.finish()?;

    // Incremental change set over day 1: 0.1% of the persons updated, a few inserted and
    // deleted.
    let mut header = vec!["command"];
    header.extend(PERSON_HEADER);
    let mut inc = Csv::create(out.join("incremental/hr/persons.csv"), &header)?;
    let touched = (n / 1000).max(1);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..touched {
        let i = rng.random_range(0..n);
        if !seen.insert(i) {
            continue;
        }
        let mut p = persons[i].clone();
        p.title = rng.random_range(0..TITLES.len());
        p.grade = TITLES[p.title].1;
        let mut row = vec!["update".to_string()];
        row.extend(person_row(&p));
        inc.row(row)?;
    }
    for k in 0..(touched / 10).max(1) {
        let mut p = person(&mut rng, (n + changes + 1 + k) as u32, &mut managers);
        p.status = "active";
        p.end = None;
        let mut row = vec!["insert".to_string()];
        row.extend(person_row(&p));
        inc.row(row)?;
    }
    inc.finish()?;

    let pipeline = pipeline_text(&model, n, seed);
    let path = out.join("pipeline/pipeline.toml");
    std::fs::create_dir_all(out.join("pipeline"))
        .and_then(|_| std::fs::File::create(&path))
        .and_then(|mut f| f.write_all(pipeline.as_bytes()))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(Generated {
        persons: n,
        accounts: n_accounts,
        groups: group_count,
        memberships: n_members,
        erp_users,
        roles: 1 + DIVISIONS.len() + departments + LOCATIONS.len() + TITLES.len() + APP_ROLES,
    })
}

fn q(s: &str) -> String {
    s.replace('\'', "''")
}

fn pipeline_text(model: &Model, n: usize, seed: u64) -> String {
    let mut t = String::new();
    let departments = DIVISIONS.len() * DEPARTMENTS_PER_DIVISION;
    t.push_str(&format!(
        r#"# Generated by `igaflow generate --identities {n} --seed {seed}` (see src/generate.rs).
# GEN_DAY selects the HR export: day1 (default), day2, incremental.
name = "generated"

# Dirty and incremental tasks patch their tables with Delta deletion vectors instead of
# rewriting them (readers of the store then need deletion vector support).
[store]
deletion_vectors = true

[connector.hr]
exports = "../${{GEN_DAY:-day1}}/hr"

[connector.ad]
exports = "../day1/ad"
update = true

[connector.erp]
exports = "../day1/erp"
update = true

[[entity]]
name = "person"
connector = "hr"
file = "persons.csv"
key = "employee_id"
thresholds = {{ max_deleted_percent = 10, min_rows = 1 }}
columns = {{ employee_id = "string", first_name = "string", last_name = "string", email = "string", division = "string", department = "string", title = "string", grade = "int", location = "string", country = "string", manager_id = "string", status = "string", start_date = "date", end_date = "date" }}
[entity.computed]
display_name = "first_name || ' ' || last_name"

[[entity]]
name = "ad_account"
connector = "ad"
file = "accounts.csv"
key = "dn"
columns = {{ dn = "string", sam_account_name = "string", employee_id = "string", mail = "string", display_name = "string", department = "string", user_account_control = "int" }}

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

[[entity]]
name = "erp_user"
connector = "erp"
file = "users.csv"
key = "login"
columns = {{ login = "string", employee_id = "string", profile = "string", state = "string" }}

[[role]]
name = "all_staff"
rule = "status <> 'terminated'"
"#
    ));
    for d in DIVISIONS {
        t.push_str(&format!(
            "\n[[role]]\nname = \"div_{}\"\nrule = \"status <> 'terminated' AND division = '{d}'\"\n",
            d.to_lowercase()
        ));
    }
    for d in 0..departments {
        t.push_str(&format!(
            "\n[[role]]\nname = \"dept_{d:02}\"\nrule = \"status <> 'terminated' AND department = '{}'\"\n",
            department_name(d)
        ));
    }
    for (i, (l, _)) in LOCATIONS.iter().enumerate() {
        t.push_str(&format!(
            "\n[[role]]\nname = \"loc_{i:02}\"\nrule = \"status <> 'terminated' AND location = '{}'\"\n",
            q(l)
        ));
    }
    for (i, (title, _, _)) in TITLES.iter().enumerate() {
        t.push_str(&format!(
            "\n[[role]]\nname = \"title_{i:02}\"\nrule = \"status <> 'terminated' AND title = '{title}'\"\n"
        ));
    }
    for (i, a) in model.apps.iter().enumerate() {
        t.push_str(&format!(
            "\n[[role]]\nname = \"app_{i:03}\"\nrule = \"status <> 'terminated' AND department = '{}' AND grade >= {}\"\n",
            department_name(a.department),
            a.min_grade
        ));
    }
    for (c, (division, grade, roles)) in model.composites.iter().enumerate() {
        let mut roles = roles.clone();
        roles.sort_unstable();
        roles.dedup();
        t.push_str(&format!(
            "\n[[composite_role]]\nname = \"bundle_{c:02}\"\nrule = \"status <> 'terminated' AND division = '{}' AND grade >= {grade}\"\nroles = [{}]\n",
            DIVISIONS[*division],
            roles
                .iter()
                .map(|r| format!("\"app_{r:03}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    t.push_str(
        r#"
[manual_assignments]
file = "../requests/assignments.csv"

[[resource_type]]
name = "ad_user"
owner = "person"
target = "ad_account"
rule = "status <> 'terminated'"
on_lost = "disable"
disable = { user_account_control = "514" }
orphans = "keep"
create_only = ["dn", "sam_account_name"]
correlation = [ { target = "employee_id", owner = "employee_id" },
                { target = "lower(mail)", owner = "lower(email)" } ]
thresholds = { max_deleted_percent = 20, min_rows = 1 }
[resource_type.scalars]
dn = "'CN=' || display_name || ' ' || employee_id || ',OU=Users,DC=corp,DC=example'"
sam_account_name = "'u' || lower(employee_id)"
display_name = "display_name"
department = "department"
mail = "email"
employee_id = "employee_id"
user_account_control = "512"

[[resource_type.link]]
link = "ad_member_of"
managed = "rules"
values = [
  { role = "all_staff", target = "CN=G_All_Staff,OU=Groups,DC=corp,DC=example" },
"#,
    );
    for d in DIVISIONS {
        t.push_str(&format!(
            "  {{ role = \"div_{}\", target = \"{}\" }},\n",
            d.to_lowercase(),
            group_dn(&format!("G_Div_{d}"))
        ));
    }
    for d in 0..departments {
        t.push_str(&format!(
            "  {{ role = \"dept_{d:02}\", target = \"{}\" }},\n",
            group_dn(&format!("G_Dept_{}", department_name(d)))
        ));
    }
    for (i, (l, _)) in LOCATIONS.iter().enumerate() {
        t.push_str(&format!(
            "  {{ role = \"loc_{i:02}\", target = \"{}\" }},\n",
            group_dn(&format!("G_Loc_{}", l.replace(' ', "_")))
        ));
    }
    for (i, (title, _, _)) in TITLES.iter().enumerate() {
        t.push_str(&format!(
            "  {{ role = \"title_{i:02}\", target = \"{}\" }},\n",
            group_dn(&format!("G_Title_{}", title.replace(' ', "_")))
        ));
    }
    for i in 0..model.apps.len() {
        t.push_str(&format!(
            "  {{ role = \"app_{i:03}\", target = \"{}\" }},\n",
            group_dn(&format!("G_App_{i:03}"))
        ));
    }
    t.push_str(
        r#"]

[[resource_type]]
name = "erp_user"
owner = "person"
target = "erp_user"
rule = "status = 'active' AND division IN ('Finance', 'Operations')"
on_lost = "disable"
disable = { state = "'disabled'" }
create_only = ["login"]
correlation = [ { target = "employee_id", owner = "employee_id" } ]
thresholds = { max_deleted_percent = 20, min_rows = 1 }
scalars = { login = "'e' || CAST(CAST(substr(employee_id, 2) AS INT) AS VARCHAR)", employee_id = "employee_id", profile = "department", state = "'enabled'" }

[[classification]]
target = "ad_account"
name = "service"
rule = "sam_account_name LIKE 'svc-%'"
protect = true

[[classification]]
target = "ad_account"
name = "admin"
rule = "sam_account_name LIKE 'adm-%'"
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
name = "sync_erp"
type = "synchronize"
connector = "erp"
depends_on = []

[[job.task]]
name = "correlation_keys"
type = "compute_correlation_keys"
depends_on = ["sync_hr", "sync_ad", "sync_erp"]

[[job.task]]
name = "role_model"
type = "compute_role_model"

[[job.task]]
name = "classification"
type = "update_classification"

[[job.task]]
name = "orders"
type = "generate_provisioning_orders"

[[job]]
name = "incremental"

[[job.task]]
name = "sync_hr"
type = "synchronize"
connector = "hr"
mode = "incremental"

[[job.task]]
name = "recently_modified"
type = "set_recently_modified_flag"
run_if = "changed"

[[job.task]]
name = "correlation_keys"
type = "compute_correlation_keys"
dirty = true
run_if = "changed"

[[job.task]]
name = "role_model"
type = "compute_role_model"
dirty = true
run_if = "changed"
depends_on = ["recently_modified", "correlation_keys"]

[[job.task]]
name = "classification"
type = "update_classification"
dirty = true
run_if = "changed"

[[job.task]]
name = "orders"
type = "generate_provisioning_orders"
dirty = true
run_if = "changed"
depends_on = ["role_model", "classification"]
"#,
    );
    t
}
