//! Run summaries: the `.eml` outbox file always, SMTP delivery to a real server (Python's
//! aiosmtpd, installed by `.ci/run`), and a mail server that is down.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// aiosmtpd writing every message into a maildir; None (test skipped) when the package is
/// missing, unless IGAFLOW_REQUIRE_SMTP_TEST is set (as in CI).
fn smtp_server(port: u16, maildir: &Path) -> Option<Child> {
    let available = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        assert!(
            std::env::var_os("IGAFLOW_REQUIRE_SMTP_TEST").is_none(),
            "aiosmtpd is not installed: pip install aiosmtpd==1.4.6"
        );
        eprintln!("skipped: the SMTP test needs Python's aiosmtpd (pip install aiosmtpd==1.4.6)");
        return None;
    }
    let child = Command::new("python3")
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(maildir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the SMTP server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(child)
}

fn notify_pipeline(port: u16) -> String {
    let mut text = hr_pipeline("");
    text = text.replacen(
        "[connector.hr]",
        &format!(
            "[notify]\nto = [\"iam-team@example.com\"]\nfrom = \"igaflow@example.com\"\nsmtp = \"smtp://127.0.0.1:{port}\"\n\n[connector.hr]"
        ),
        1,
    );
    text
}

fn mails(maildir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    rd.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect()
}

#[test]
fn summary_reaches_a_real_smtp_server_and_survives_one_that_is_down() {
    let env = Env::new();
    let port = free_port();
    let maildir = env.path("maildir");
    let Some(mut server) = smtp_server(port, &maildir) else {
        return;
    };
    env.write_pipeline(&notify_pipeline(port));
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    let out = env.run("complete", &[], &[]);
    out.expect_code(0);
    let run1 = run_id_of(&out);
    let t0 = Instant::now();
    while mails(&maildir).is_empty() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = mails(&maildir);
    assert_eq!(got.len(), 1, "one summary");
    assert!(got[0].contains("Subject: igaflow testhr"), "{}", got[0]);
    assert!(
        got[0].contains("complete") && got[0].contains("succeeded"),
        "{}",
        got[0]
    );
    assert!(got[0].contains(&run1));
    assert!(env.path(&format!("store/_outbox/{run1}.eml")).is_file());

    // The server goes down: the run still succeeds and the summary waits in the outbox.
    server.kill().unwrap();
    server.wait().unwrap();
    env.write("exports/hr/persons.csv", persons_csv(1..=4));
    let out = env.run("complete", &[], &[]);
    out.expect_code(0);
    let run2 = run_id_of(&out);
    let eml = std::fs::read_to_string(env.path(&format!("store/_outbox/{run2}.eml"))).unwrap();
    assert!(
        eml.contains("To: iam-team@example.com") && eml.contains(&run2),
        "{eml}"
    );
    assert!(env.path(&format!("store/_outbox/unsent/{run2}")).exists());

    // Back up: the next run sends the waiting summary too.
    let Some(mut server) = smtp_server(port, &maildir) else {
        return;
    };
    let out = env.run("complete", &[], &[]);
    out.expect_code(0);
    let t0 = Instant::now();
    while mails(&maildir).len() < 3 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = mails(&maildir);
    assert_eq!(got.len(), 3, "the unsent summary was retried");
    assert!(got.iter().any(|m| m.contains(&run2)));
    assert!(!env.path(&format!("store/_outbox/unsent/{run2}")).exists());
    server.kill().unwrap();
    let _ = server.wait();
}

#[test]
fn without_smtp_the_summary_is_only_written_to_the_outbox() {
    let env = Env::new();
    let text = notify_pipeline(1).replace("smtp = \"smtp://127.0.0.1:1\"\n", "");
    env.write_pipeline(&text);
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    let out = env.run("complete", &[], &[]);
    out.expect_code(0);
    let run = run_id_of(&out);
    let eml = std::fs::read_to_string(env.path(&format!("store/_outbox/{run}.eml"))).unwrap();
    assert!(eml.contains("From: igaflow@example.com"), "{eml}");
    assert!(eml.contains("sync_hr"), "{eml}");
}
