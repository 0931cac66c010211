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
    let reference = Env::new();
    reference.write_pipeline(&ad_only_pipeline());
    copy_dir(&base.path("store"), &reference.path("store"));
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
        let env = Env::new();
        env.write_pipeline(&ad_only_pipeline());
        copy_dir(&base.path("store"), &env.path("store"));
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
