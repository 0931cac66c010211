//! Crash safety: SIGKILL at every step of a connector commit.

use crate::common::*;

/// Every table the AD connector's synchronization writes (recently_modified is shared with
/// other connectors; here only AD writes it).
const AD_TABLES: [&str; 7] = [
    "ad_account",
    "ad_account__history",
    "ad_group",
    "ad_group__history",
    "ad_member_of",
    "ad_member_of__history",
    "recently_modified",
];

fn ad_only_pipeline() -> String {
    let mut text = contoso_pipeline_text();
    text.push_str(
        "\n[[job]]\nname = \"ad_only\"\n[[job.task]]\nname = \"sync_ad\"\ntype = \"synchronize\"\nconnector = \"ad\"\n",
    );
    text
}

#[test]
fn sigkill_at_each_commit_step_leaves_old_or_new_state_and_rerun_converges() {
    // The base: day 1 committed.
    let base = Env::new();
    base.write_pipeline(&ad_only_pipeline());
    base.run("ad_only", &[], &[("CONTOSO_DAY", "day1")])
        .expect_code(0);
    let old = snapshot(&base.store(), &AD_TABLES, false);

    // The reference: day 2 without interruption.
    let reference = Env::copy_of(&base, &ad_only_pipeline());
    reference
        .run("ad_only", &[], &[("CONTOSO_DAY", "day2")])
        .expect_code(0);
    let new = snapshot(&reference.store(), &AD_TABLES, true);
    assert_ne!(
        snapshot(&base.store(), &AD_TABLES, true),
        new,
        "day 2 changes AD"
    );

    let mut killed = 0;
    for step in 0.. {
        let env = Env::copy_of(&base, &ad_only_pipeline());
        let failpoint = format!("sync.commit.{step}");
        let out = env.run(
            "ad_only",
            &[],
            &[
                ("CONTOSO_DAY", "day2"),
                ("IGAFLOW_FAILPOINT", failpoint.as_str()),
            ],
        );
        if out.code == Some(0) {
            // Past the last step: the failpoint was never reached.
            break;
        }
        assert_eq!(out.signal, Some(9), "step {step}: {out:?}");
        killed += 1;

        // Readers see the old state entirely (the kill came before the catalog commit).
        let after_kill = snapshot(&env.store(), &AD_TABLES, false);
        let normalized = snapshot(&env.store(), &AD_TABLES, true);
        assert!(
            after_kill == old || normalized == new,
            "step {step}: a mix of old and new state"
        );
        assert_eq!(
            after_kill, old,
            "step {step}: killed before the catalog commit, so old state"
        );

        // A re-run converges to the uninterrupted result.
        env.run("ad_only", &[], &[("CONTOSO_DAY", "day2")])
            .expect_code(0);
        assert_eq!(
            snapshot(&env.store(), &AD_TABLES, true),
            new,
            "step {step}: re-run differs"
        );
        // And a further run finds nothing to do.
        let again = env.run("ad_only", &[], &[("CONTOSO_DAY", "day2")]);
        again.expect_code(0);
        assert!(
            again.stdout.contains("no_changes"),
            "step {step}: {}",
            again.stdout
        );
    }
    // 6 table writes + recently_modified + the catalog commit.
    assert!(killed >= 7, "only {killed} commit steps were exercised");
}

#[test]
fn sigkill_after_commit_before_run_record_keeps_new_state() {
    let env = Env::new();
    env.write_pipeline(&ad_only_pipeline());
    env.run("ad_only", &[], &[("CONTOSO_DAY", "day1")])
        .expect_code(0);
    let out = env.run(
        "ad_only",
        &[],
        &[("CONTOSO_DAY", "day2"), ("IGAFLOW_FAILPOINT", "run.end")],
    );
    assert_eq!(out.signal, Some(9), "{out:?}");
    assert_eq!(env.scalar("select count(*) from ad_member_of"), "1128");
    let again = env.run("ad_only", &[], &[("CONTOSO_DAY", "day2")]);
    again.expect_code(0);
    assert!(again.stdout.contains("no_changes"), "{}", again.stdout);
}

/// A table written in parallel parts (`correlation_keys` here, its parts made small with
/// `IGAFLOW_WRITE_PART_ROWS`) is committed as one Delta version per part: a run killed between
/// them leaves the committed state (the catalog names none of them), and the re-run writes
/// the table again, to the uninterrupted run's rows, in parts.
#[test]
fn sigkill_between_the_parts_of_a_table_leaves_old_state_and_rerun_converges() {
    const TABLES: [&str; 3] = ["correlation_keys", "correlations", "assigned_roles"];
    let parts = [("IGAFLOW_WRITE_PART_ROWS", "8")];
    let base = Env::new();
    base.write_pipeline(&contoso_pipeline_text());
    base.run("complete", &[], &[parts[0], ("CONTOSO_DAY", "day1")])
        .expect_code(0);
    let old = snapshot(&base.store(), &TABLES, true);

    let reference = Env::copy_of(&base, &contoso_pipeline_text());
    reference
        .run("complete", &[], &[parts[0], ("CONTOSO_DAY", "day2")])
        .expect_code(0);
    let new = snapshot(&reference.store(), &TABLES, true);
    assert_ne!(
        old["correlation_keys"], new["correlation_keys"],
        "day 2 changes the keys"
    );

    let env = Env::copy_of(&base, &contoso_pipeline_text());
    let out = env.run(
        "complete",
        &[],
        &[
            parts[0],
            ("CONTOSO_DAY", "day2"),
            ("IGAFLOW_FAILPOINT", "write.correlation_keys.parts"),
        ],
    );
    assert_eq!(out.signal, Some(9), "{out:?}");
    assert_eq!(
        snapshot(&env.store(), &TABLES, true),
        old,
        "killed: the old state"
    );
    env.run("complete", &[], &[parts[0], ("CONTOSO_DAY", "day2")])
        .expect_code(0);
    assert_eq!(
        snapshot(&env.store(), &TABLES, true),
        new,
        "the re-run differs"
    );
    // Written in parts (one per core): the last part overwrote the table, the first was
    // appended to it.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        return;
    }
    let commits = delta_commits(&env, "correlation_keys");
    let [.., overwrite, append] = commits.as_slice() else {
        panic!("{} commits", commits.len())
    };
    let mode = |c: &[serde_json::Value]| {
        let info = c.iter().find(|a| a["commitInfo"].is_object()).unwrap();
        info["commitInfo"]["operationParameters"]["mode"].clone()
    };
    let adds = |c: &[serde_json::Value]| c.iter().filter(|a| a["add"].is_object()).count();
    assert_eq!(mode(overwrite), "Overwrite");
    assert_eq!(mode(append), "Append");
    assert_eq!((adds(overwrite), adds(append)), (1, 1));
}
