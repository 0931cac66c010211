//! Two jobs on one store at the same time (two processes): a task whose tables another run
//! committed while it computed does not overwrite them with a result of the old state.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The demo pipeline with two more jobs: the role model alone, and an HR synchronization
/// followed by the role model.
fn pipeline() -> String {
    let mut text = contoso_pipeline_text();
    text.push_str(
        r#"
[[job]]
name = "model"
[[job.task]]
name = "role_model"
type = "compute_role_model"

[[job]]
name = "hr_model"
[[job.task]]
name = "sync_hr"
type = "synchronize"
connector = "hr"
[[job.task]]
name = "correlation_keys"
type = "compute_correlation_keys"
[[job.task]]
name = "role_model"
type = "compute_role_model"
"#,
    );
    text
}

const MODEL: [&str; 3] = ["assigned_roles", "assigned_resources", "assigned_links"];

fn role_model_status(env: &Env, out: &Out) -> String {
    env.scalar(&format!(
        "select status from task_runs where run_id = '{}' and task = 'role_model'",
        run_id_of(out)
    ))
}

/// Starts `igaflow run` of `job` in the background, paused at `point` until [`resume`].
fn start_paused(env: &Env, job: &str, day: &str, point: &str) -> std::process::Child {
    let pause = env.path("pause");
    std::fs::create_dir_all(&pause).unwrap();
    let (pipeline_dir, store) = (env.pipeline(), env.store());
    let child = Command::new(env!("CARGO_BIN_EXE_igaflow"))
        .args(["run", &pipeline_dir, "--job", job, "--store", &store])
        .env_remove("IGAFLOW_STORE")
        .env_remove("IGAFLOW_FAILPOINT")
        .env("CONTOSO_DAY", day)
        .env("NO_COLOR", "1")
        .env("IGAFLOW_PAUSE", point)
        .env("IGAFLOW_PAUSE_DIR", &pause)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the igaflow binary runs");
    let started = Instant::now();
    while !pause.join("reached").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the run never reached {point}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Lets the paused run go on and waits for it.
fn resume(env: &Env, child: std::process::Child) -> Out {
    std::fs::write(env.path("pause").join("go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code(),
        signal: None,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_task_whose_tables_another_run_committed_meanwhile_runs_again_on_the_new_state() {
    let env = Env::new();
    env.write_pipeline(&pipeline());
    env.run("complete", &[], &[("CONTOSO_DAY", "day1")])
        .expect_code(0);
    let day1 = snapshot(&env.store(), &MODEL, true);

    // Run A computes the role model of day 1 and waits just before its commit.
    let a = start_paused(&env, "model", "day1", "commit.task:compute_role_model");

    // Meanwhile run B synchronizes day 2's HR export and commits its role model.
    let b = env.run("hr_model", &[], &[("CONTOSO_DAY", "day2")]);
    b.expect_code(0);
    let day2 = snapshot(&env.store(), &MODEL, true);
    assert!(day1 != day2, "day 2's HR export changes the role model");

    // A goes on: committing its day-1 result would undo B's role model.
    let a = resume(&env, a);
    a.expect_code(0);
    assert!(
        snapshot(&env.store(), &MODEL, true) == day2,
        "run A overwrote run B's role model"
    );
    assert!(
        a.stderr.contains("running it again on the new state"),
        "run A's commit did not conflict:\n{}",
        a.stderr
    );
    // A ran again on B's state: nothing of its own to change.
    assert_eq!(role_model_status(&env, &a), "no_changes", "{}", a.stdout);
    // Both runs are recorded.
    let runs = env.query("select count(*) from runs where job in ('model', 'hr_model')");
    assert_eq!(runs, vec![vec!["2".to_string()]]);
}

#[test]
fn two_runs_ending_together_are_both_recorded() {
    let env = Env::new();
    env.write_pipeline(&pipeline());
    env.run("complete", &[], &[("CONTOSO_DAY", "day1")])
        .expect_code(0);
    // A has written its run records and waits before committing them; B runs whole.
    let a = start_paused(&env, "model", "day1", "commit.run_end");
    let b = env.run("hr_model", &[], &[("CONTOSO_DAY", "day2")]);
    b.expect_code(0);
    let a = resume(&env, a);
    a.expect_code(0);
    for (out, job, tasks) in [(&a, "model", "1"), (&b, "hr_model", "3")] {
        let id = run_id_of(out);
        assert_eq!(
            env.query(&format!("select job from runs where run_id = '{id}'")),
            vec![vec![job.to_string()]],
            "{}",
            out.stderr
        );
        assert_eq!(
            env.scalar(&format!(
                "select count(*) from task_runs where run_id = '{id}'"
            )),
            tasks
        );
    }
    assert_eq!(env.scalar("select count(*) from runs"), "3");
}

/// `update_identities` with `fast_track` commits its identity tables, then the orders. When
/// another run commits the orders in between, only the orders run again: the task's report
/// still counts what its first commit wrote (a task retried whole would find its own tables
/// already there and report no events, so a `run_if = "changed"` task after it would not run).
#[test]
fn a_fast_track_whose_orders_another_run_committed_reports_its_own_commit() {
    let env = Env::new();
    let text = contoso_pipeline_text().replace("fast_track = false", "fast_track = true");
    assert!(text.contains("fast_track = true"));
    env.write_pipeline(&format!(
        "{text}
[[job]]
name = \"identities\"
[[job.task]]
name = \"identities\"
type = \"update_identities\"

[[job]]
name = \"orders_only\"
[[job.task]]
name = \"orders\"
type = \"generate_provisioning_orders\"
"
    ));
    for day in ["day1", "day2"] {
        env.run("complete", &[], &[("CONTOSO_DAY", day)])
            .expect_code(0);
    }
    // Run A commits the identity tables and waits before the fast track's orders commit.
    let a = start_paused(
        &env,
        "identities",
        "day2",
        "commit.task:generate_provisioning_orders",
    );
    // Meanwhile run B computes the orders from A's identity tables and commits them.
    let b = env.run("orders_only", &[], &[("CONTOSO_DAY", "day2")]);
    b.expect_code(0);
    let a = resume(&env, a);
    a.expect_code(0);
    assert!(
        a.stderr.contains("running it again on the new state"),
        "run A's orders commit did not conflict:\n{}",
        a.stderr
    );
    let run = run_id_of(&a);
    let (status, message) = {
        let row = env.query(&format!(
            "select status, message from task_runs where run_id = '{run}' and task = 'identities'"
        ));
        (row[0][0].clone(), row[0][1].clone())
    };
    let events = env.scalar(&format!(
        "select count(*) from identity_events where run_id = '{run}'"
    ));
    assert_ne!(events, "0", "day 2 deactivates accounts: {message}");
    assert_eq!(status, "succeeded", "{message}");
    assert!(
        message.contains(&format!(", {events} event(s)")),
        "the report counts the {events} event(s) the run committed: {message}"
    );
}
