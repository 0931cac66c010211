//! The job engine: dependencies, failures, run_if, concurrency, the lock, invoke_command.

use crate::common::*;

/// The HR pipeline plus a job built from `tasks` (TOML `[[job.task]]` bodies).
fn job_pipeline(job: &str, tasks: &[&str]) -> String {
    let mut text = hr_pipeline("");
    text.push_str(&format!("\n[[job]]\nname = \"{job}\"\n"));
    for t in tasks {
        text.push_str(&format!("[[job.task]]\n{t}\n"));
    }
    text
}

fn statuses(env: &Env, run: &str) -> Vec<Vec<String>> {
    env.query(&format!(
        "select task, status from task_runs where run_id = '{run}' order by started_at, task"
    ))
}

#[test]
fn a_failing_task_skips_its_dependants_unless_continue_on_error() {
    let env = Env::new();
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    let fail = "name = \"fail\"\ntype = \"invoke_command\"\ncommand = [\"sh\", \"-c\", \"echo broken export >&2; exit 7\"]";
    let after = "name = \"after\"\ntype = \"synchronize\"\nconnector = \"hr\"";
    env.write_pipeline(&job_pipeline("j", &[fail, after]));
    let out = env.run("j", &[], &[]);
    out.expect_code(1);
    let run = run_id_of(&out);
    let rows = env.query(&format!(
        "select task, status, message from task_runs where run_id = '{run}' order by task"
    ));
    assert_eq!(rows[0][0], "after");
    assert_eq!(rows[0][1], "skipped");
    assert_eq!(rows[1][1], "failed");
    assert!(
        rows[1][2].contains("code 7") && rows[1][2].contains("broken export"),
        "{:?}",
        rows[1]
    );
    assert_eq!(
        env.scalar(&format!("select status from runs where run_id = '{run}'")),
        "failed"
    );

    let fail_tolerated = format!("{fail}\ncontinue_on_error = true");
    env.write_pipeline(&job_pipeline("j", &[&fail_tolerated, after]));
    let out = env.run("j", &[], &[]);
    out.expect_code(0);
    let run = run_id_of(&out);
    assert_eq!(
        statuses(&env, &run)
            .iter()
            .find(|r| r[0] == "after")
            .unwrap()[1],
        "succeeded"
    );
    assert_eq!(env.scalar("select count(*) from person"), "3");
}

#[test]
fn a_blocked_task_with_continue_on_error_runs_its_dependants_and_still_exits_3() {
    let env = Env::new();
    env.write("exports/hr/persons.csv", persons_csv(1..=1000));
    let sync =
        "name = \"sync\"\ntype = \"synchronize\"\nconnector = \"hr\"\ncontinue_on_error = true";
    let after = "name = \"after\"\ntype = \"invoke_command\"\ncommand = [\"true\"]";
    env.write_pipeline(&job_pipeline("j", &[sync, after]));
    env.run("j", &[], &[]).expect_code(0);

    // 40% of the persons gone: the synchronization blocks.
    env.write("exports/hr/persons.csv", persons_csv(1..=600));
    let out = env.run("j", &[], &[]);
    out.expect_code(3);
    let run = run_id_of(&out);
    let st = statuses(&env, &run);
    let of = |t: &str| st.iter().find(|r| r[0] == t).unwrap()[1].clone();
    assert_eq!(of("sync"), "blocked");
    assert_eq!(of("after"), "succeeded", "continue_on_error lets it run");
    assert_eq!(
        env.scalar(&format!("select status from runs where run_id = '{run}'")),
        "blocked"
    );
    assert_eq!(env.scalar("select count(*) from person"), "1000");
}

#[test]
fn run_if_changed_follows_the_direct_dependencies() {
    let env = Env::new();
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    let sync = "name = \"sync\"\ntype = \"synchronize\"\nconnector = \"hr\"";
    // Nothing to recompute (no computed columns): no_changes even when the sync changed rows.
    let expr = "name = \"expr\"\ntype = \"update_entity_property_expressions\"";
    let after_expr = "name = \"after_expr\"\ntype = \"invoke_command\"\ncommand = [\"true\"]\nrun_if = \"changed\"";
    let after_both = "name = \"after_both\"\ntype = \"invoke_command\"\ncommand = [\"true\"]\nrun_if = \"changed\"\ndepends_on = [\"sync\", \"expr\"]";
    env.write_pipeline(&job_pipeline("j", &[sync, expr, after_expr, after_both]));
    let first = env.run("j", &[], &[]);
    first.expect_code(0);
    let st = statuses(&env, &run_id_of(&first));
    let of = |t: &str| st.iter().find(|r| r[0] == t).unwrap()[1].clone();
    assert_eq!(of("expr"), "no_changes");
    assert_eq!(
        of("after_expr"),
        "skipped",
        "its only dependency changed nothing"
    );
    assert_eq!(
        of("after_both"),
        "succeeded",
        "one of its dependencies changed rows"
    );
    let second = env.run("j", &[], &[]);
    second.expect_code(0);
    let st = statuses(&env, &run_id_of(&second));
    let of = |t: &str| st.iter().find(|r| r[0] == t).unwrap()[1].clone();
    assert_eq!(of("sync"), "no_changes");
    assert_eq!(of("after_both"), "skipped");
}

#[test]
fn a_fulfill_task_after_orders_is_skipped_when_there_are_no_orders() {
    let env = Env::new();
    let mut text =
        std::fs::read_to_string(repo().join("datasets/cases/pre_existing/pipeline.toml")).unwrap();
    text = text.replace("exports = \"${CASE_DAY:-day1}/", "exports = \"../exports/");
    text.push_str(
        "\n[[job]]\nname = \"with_fulfill\"\n[[job.task]]\nname = \"sync_hr\"\ntype = \"synchronize\"\nconnector = \"hr\"\n[[job.task]]\nname = \"sync_app\"\ntype = \"synchronize\"\nconnector = \"app\"\ndepends_on = []\n[[job.task]]\nname = \"keys\"\ntype = \"compute_correlation_keys\"\ndepends_on = [\"sync_hr\", \"sync_app\"]\n[[job.task]]\nname = \"roles\"\ntype = \"compute_role_model\"\n[[job.task]]\nname = \"orders\"\ntype = \"generate_provisioning_orders\"\n[[job.task]]\nname = \"fulfill\"\ntype = \"invoke_command\"\ncommand = [\"true\"]\nrun_if = \"changed\"\n",
    );
    env.write_pipeline(&text);
    let case = repo().join("datasets/cases/pre_existing/day1");
    copy_dir(&case, &env.path("exports"));
    // Without G_ADMIN on u1 nothing is to change: no orders.
    env.write("exports/app/members.csv", "login,gid\nu1,G_CRM\nu2,G_CRM\n");
    let out = env.run("with_fulfill", &[], &[]);
    out.expect_code(0);
    let st = statuses(&env, &run_id_of(&out));
    let of = |t: &str| st.iter().find(|r| r[0] == t).unwrap()[1].clone();
    assert_eq!(of("orders"), "no_changes");
    assert_eq!(of("fulfill"), "skipped");
    // With the unexplained group there is an order: fulfill runs.
    env.write(
        "exports/app/members.csv",
        "login,gid\nu1,G_ADMIN\nu1,G_CRM\nu2,G_CRM\n",
    );
    let out = env.run("with_fulfill", &[], &[]);
    out.expect_code(0);
    let st = statuses(&env, &run_id_of(&out));
    let of = |t: &str| st.iter().find(|r| r[0] == t).unwrap()[1].clone();
    assert_eq!(of("orders"), "succeeded");
    assert_eq!(of("fulfill"), "succeeded");
}

#[test]
fn independent_roots_run_at_the_same_time() {
    let env = Env::new();
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    let a =
        "name = \"a\"\ntype = \"invoke_command\"\ncommand = [\"sleep\", \"1\"]\ndepends_on = []";
    let b =
        "name = \"b\"\ntype = \"invoke_command\"\ncommand = [\"sleep\", \"1\"]\ndepends_on = []";
    let c = "name = \"c\"\ntype = \"synchronize\"\nconnector = \"hr\"\ndepends_on = [\"a\", \"b\"]";
    env.write_pipeline(&job_pipeline("j", &[a, b, c]));
    let out = env.run("j", &[], &[]);
    out.expect_code(0);
    let run = run_id_of(&out);
    let times = env.query(&format!(
        "select task, cast(started_at as varchar), cast(ended_at as varchar) from task_runs where run_id = '{run}' order by task"
    ));
    let (a, b, c) = (&times[0], &times[1], &times[2]);
    assert!(b[1] < a[2] && a[1] < b[2], "a and b overlap: {times:?}");
    assert!(c[1] >= a[2] && c[1] >= b[2], "c waits for both: {times:?}");
}

#[test]
fn invoke_command_timeout_kills_the_program_and_its_children() {
    let env = Env::new();
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    let marker = env.path("child.pid");
    let script = format!("sleep 30 & echo $! > {}; wait", marker.display());
    let slow = format!(
        "name = \"slow\"\ntype = \"invoke_command\"\ncommand = [\"sh\", \"-c\", {}]\ntimeout = \"1s\"",
        toml::Value::String(script)
    );
    env.write_pipeline(&job_pipeline("j", &[&slow]));
    let t0 = std::time::Instant::now();
    let out = env.run("j", &[], &[]);
    out.expect_code(1);
    assert!(
        t0.elapsed().as_secs() < 20,
        "the timeout did not stop the run"
    );
    let run = run_id_of(&out);
    let message = env.scalar(&format!(
        "select message from task_runs where run_id = '{run}'"
    ));
    assert!(message.contains("did not finish within"), "{message}");
    let pid: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Gone, or a zombie waiting for a reaper (killed, not running): not alive.
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false);
    assert!(!alive, "the grandchild {pid} outlived the timeout");
}

fn lock_file(env: &Env, job: &str) -> std::path::PathBuf {
    env.path(&format!("store/_igaflow/locks/{job}.json"))
}

#[test]
fn a_held_lock_exits_4_and_a_dead_holder_is_cleared() {
    let env = Env::new();
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    env.write_pipeline(&job_pipeline(
        "j",
        &["name = \"sync\"\ntype = \"synchronize\"\nconnector = \"hr\""],
    ));
    env.run("j", &[], &[]).expect_code(0);
    assert!(
        !lock_file(&env, "j").exists(),
        "the lock is released after a run"
    );

    // A live process of this host holds the lock: this test process.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let holder = |pid: u32| {
        format!(
            r#"{{"run_id":"other-run","host":"{host}","pid":{pid},"started_at":"2026-11-25T00:00:00Z"}}"#
        )
    };
    std::fs::write(lock_file(&env, "j"), holder(std::process::id())).unwrap();
    let locked = env.run("j", &[], &[]);
    locked.expect_code(4);
    assert!(locked.stderr.contains("other-run"), "{}", locked.stderr);

    // The holder is gone (a finished process): the lock is stale and cleared.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    std::fs::write(lock_file(&env, "j"), holder(dead)).unwrap();
    env.run("j", &[], &[]).expect_code(0);
    assert!(!lock_file(&env, "j").exists());
}

#[test]
fn a_run_killed_with_sigkill_leaves_a_lock_the_next_run_clears() {
    let env = Env::new();
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    env.write_pipeline(&job_pipeline(
        "j",
        &["name = \"sync\"\ntype = \"synchronize\"\nconnector = \"hr\""],
    ));
    let killed = env.run("j", &[], &[("IGAFLOW_FAILPOINT", "sync.commit.0")]);
    assert_eq!(killed.signal, Some(9), "{killed:?}");
    assert!(
        lock_file(&env, "j").exists(),
        "the killed run held the lock"
    );
    env.run("j", &[], &[]).expect_code(0);
    assert_eq!(env.scalar("select count(*) from person"), "3");
}

#[test]
fn configuration_errors_of_jobs() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("exports/hr")).unwrap();
    let a = "name = \"a\"\ntype = \"synchronize\"\nconnector = \"hr\"\ndepends_on = [\"b\"]";
    let b = "name = \"b\"\ntype = \"synchronize\"\nconnector = \"hr\"\ndepends_on = [\"a\"]";
    env.write_pipeline(&job_pipeline("j", &[a, b]));
    let out = igaflow(&["validate", &env.pipeline()], &[]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("a → b → a") || out.stderr.contains("b → a → b"),
        "{}",
        out.stderr
    );

    let missing = "name = \"x\"\ntype = \"invoke_command\"";
    env.write_pipeline(&job_pipeline("j", &[missing]));
    let out = igaflow(&["validate", &env.pipeline()], &[]);
    out.expect_code(2);
    assert!(out.stderr.contains("command"), "{}", out.stderr);

    let unknown_dep =
        "name = \"x\"\ntype = \"synchronize\"\nconnector = \"hr\"\ndepends_on = [\"nope\"]";
    env.write_pipeline(&job_pipeline("j", &[unknown_dep]));
    let out = igaflow(&["validate", &env.pipeline()], &[]);
    out.expect_code(2);
    assert!(out.stderr.contains("nope"), "{}", out.stderr);

    let bad_timeout =
        "name = \"x\"\ntype = \"invoke_command\"\ncommand = [\"true\"]\ntimeout = \"soon\"";
    env.write_pipeline(&job_pipeline("j", &[bad_timeout]));
    let out = igaflow(&["validate", &env.pipeline()], &[]);
    out.expect_code(2);
    assert!(out.stderr.contains("soon"), "{}", out.stderr);
}

#[test]
fn invoke_sql_writes_a_query_result_to_a_file() {
    let env = Env::new();
    env.write("exports/hr/persons.csv", persons_csv(1..=4));
    env.write(
        "pipeline/levels.sql",
        "select level, count(*) as persons from person group by level order by level",
    );
    let sync = "name = \"sync\"\ntype = \"synchronize\"\nconnector = \"hr\"";
    let csv = "name = \"to_csv\"\ntype = \"invoke_sql\"\nsql = \"levels.sql\"\noutput = \"../out/levels.csv\"";
    let pq = "name = \"to_parquet\"\ntype = \"invoke_sql\"\nsql = \"levels.sql\"\noutput = \"../out/levels.parquet\"\nformat = \"parquet\"\ndepends_on = [\"sync\"]";
    env.write_pipeline(&job_pipeline("j", &[sync, csv, pq]));
    env.run("j", &[], &[]).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(env.path("out/levels.csv")).unwrap(),
        "level,persons\n1,1\n2,1\n3,1\n4,1\n"
    );
    let bytes = std::fs::read(env.path("out/levels.parquet")).unwrap();
    assert_eq!(&bytes[..4], b"PAR1");

    // A query that does not plan fails the task with exit 2 and names the file.
    env.write("pipeline/levels.sql", "select nope from person");
    let out = env.run("j", &[], &[]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("levels.sql") && out.stderr.contains("nope"),
        "{}",
        out.stderr
    );
}

/// `igaflow schedule` on the environment's pipeline and store, in the background.
fn start_scheduler(env: &Env) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_igaflow"))
        .args([
            "schedule",
            &env.pipeline(),
            "--store",
            &env.store(),
            "--quiet",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGTERM, and the scheduler exits 0.
fn stop_scheduler(mut child: std::process::Child) {
    // SAFETY: sending SIGTERM to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the scheduler exits 0 on SIGTERM");
}

/// Runs ordered by start (columns 2 and 3: start and end): none starts before the previous ends.
fn assert_sequential(runs: &[Vec<String>]) {
    for w in runs.windows(2) {
        assert!(w[1][2] >= w[0][3], "two runs overlapped: {runs:?}");
    }
}

#[test]
fn the_scheduler_runs_on_interval_never_overlaps_survives_failures_and_stops_on_sigterm() {
    let env = Env::new();
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    let mut text = hr_pipeline("");
    text.push_str(
        "\n[[job]]\nname = \"tick\"\ninterval = \"1s\"\n[[job.task]]\nname = \"work\"\ntype = \"invoke_command\"\ncommand = [\"sh\", \"-c\", \"sleep 0.3; test -f ../fail && exit 3; exit 0\"]\n",
    );
    env.write_pipeline(&text);
    env.write("fail", "");
    let child = start_scheduler(&env);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    std::fs::remove_file(env.path("fail")).unwrap(); // later runs succeed
    std::thread::sleep(std::time::Duration::from_millis(2500));
    stop_scheduler(child);
    let runs = env.query("select status, trigger, cast(started_at as varchar) as s, cast(ended_at as varchar) as e from runs where job = 'tick' order by s");
    assert!(runs.len() >= 3, "{runs:?}");
    assert!(runs.iter().all(|r| r[1] == "schedule"), "{runs:?}");
    assert!(
        runs.iter().any(|r| r[0] == "failed"),
        "a failing run: {runs:?}"
    );
    assert!(
        runs.iter().any(|r| r[0] == "succeeded"),
        "it kept going: {runs:?}"
    );
    assert_sequential(&runs);
}

#[test]
fn the_scheduler_runs_one_job_at_a_time_and_a_due_job_after_the_running_one() {
    let env = Env::new();
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    let mut text = hr_pipeline("");
    for (name, seconds) in [("slow", "2"), ("quick", "0.1")] {
        text.push_str(&format!(
            "\n[[job]]\nname = \"{name}\"\ninterval = \"1s\"\n[[job.task]]\nname = \"work\"\ntype = \"invoke_command\"\ncommand = [\"sleep\", \"{seconds}\"]\n"
        ));
    }
    env.write_pipeline(&text);
    let child = start_scheduler(&env);
    std::thread::sleep(std::time::Duration::from_millis(3500));
    stop_scheduler(child);
    let runs = env.query("select job, status, cast(started_at as varchar) as s, cast(ended_at as varchar) as e from runs order by s");
    assert!(
        runs.iter().any(|r| r[0] == "slow") && runs.iter().any(|r| r[0] == "quick"),
        "{runs:?}"
    );
    // Every run recorded and succeeded, and no two runs overlapped, whichever their job.
    assert!(runs.iter().all(|r| r[1] == "succeeded"), "{runs:?}");
    assert_sequential(&runs);
}

#[test]
fn json_logs_are_one_object_per_event() {
    let env = Env::new();
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    env.write_pipeline(&job_pipeline(
        "j",
        &["name = \"sync\"\ntype = \"synchronize\"\nconnector = \"hr\""],
    ));
    let pipeline = env.pipeline();
    let store = env.store();
    let run_json = || {
        igaflow(
            &[
                "run",
                &pipeline,
                "--job",
                "j",
                "--store",
                &store,
                "--log-format",
                "json",
            ],
            &[],
        )
    };
    let out = run_json();
    out.expect_code(0);
    let events: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["message"] == "task ended" && e["fields"]["task"] == "sync"),
        "{}",
        out.stderr
    );
    assert!(
        events.iter().any(|e| e["fields"]["message"] == "run ended"),
        "{}",
        out.stderr
    );

    // A failing run: still one JSON object per line.
    env.write("exports/hr/persons.csv", "employee_id,name\n");
    let out = run_json();
    out.expect_code(2);
    for l in out.stderr.lines() {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not JSON: {l}: {e}"));
    }
}

#[test]
fn memory_limit_is_parsed_and_applied() {
    let env = Env::new();
    env.write_pipeline(&contoso_pipeline_text());
    let bad = env.run(
        "complete",
        &["--memory-limit", "lots"],
        &[("CONTOSO_DAY", "day1")],
    );
    bad.expect_code(2);
    assert!(
        bad.stderr.contains("--memory-limit `lots`"),
        "{}",
        bad.stderr
    );
    // The demo fits in 64 MiB and gives the same orders as without a limit.
    let limited = env.run(
        "complete",
        &["--memory-limit", "64MiB"],
        &[("CONTOSO_DAY", "day1")],
    );
    limited.expect_code(0);
    let ids = env.query("select order_id from provisioning_orders order by order_id");
    let other = Env::new();
    other.write_pipeline(&contoso_pipeline_text());
    other
        .run("complete", &[], &[("CONTOSO_DAY", "day1")])
        .expect_code(0);
    assert_eq!(
        ids,
        other.query("select order_id from provisioning_orders order by order_id")
    );
    assert_eq!(ids.len(), 71);
}

/// One run with several outcomes exits with the first of 2, 3, 1 (README, exit codes): a block
/// beside a failed task is 3, a bad export beside a failed task is 2.
#[test]
fn several_outcomes_in_one_run_exit_with_the_most_urgent() {
    let env = Env::new();
    env.write("exports/hr/persons.csv", persons_csv(1..=1000));
    let sync = "name = \"sync\"\ntype = \"synchronize\"\nconnector = \"hr\"";
    let fail = "name = \"fail\"\ntype = \"invoke_command\"\ncommand = [\"false\"]\ndepends_on = []";
    env.write_pipeline(&job_pipeline("j", &[sync, fail]));
    env.run("j", &[], &[]).expect_code(1);

    env.write("exports/hr/persons.csv", persons_csv(1..=600));
    let out = env.run("j", &[], &[]);
    out.expect_code(3);
    let st = statuses(&env, &run_id_of(&out));
    let of = |t: &str| st.iter().find(|r| r[0] == t).unwrap()[1].clone();
    assert_eq!(
        (of("sync"), of("fail")),
        ("blocked".into(), "failed".into())
    );

    env.write(
        "exports/hr/persons.csv",
        persons_csv(1..=1000).replacen(",1,\n", ",one,\n", 1),
    );
    let out = env.run("j", &[], &[]);
    out.expect_code(2);
    let st = statuses(&env, &run_id_of(&out));
    let of = |t: &str| st.iter().find(|r| r[0] == t).unwrap()[1].clone();
    assert_eq!((of("sync"), of("fail")), ("failed".into(), "failed".into()));
}
