//! Every variable README documents is one the server accepts: the server starts with all of them
//! set (to their documented defaults, or to a sample value where the default is none), and every
//! setting the server reads is documented.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// (variables, defaults) of each row of README's settings table.
fn documented() -> Vec<(Vec<String>, Vec<String>)> {
    let readme = include_str!("../../README.md");
    let ticks = |cell: &str| -> Vec<String> {
        cell.split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s.to_owned())
            .collect()
    };
    readme
        .lines()
        .filter(|l| l.starts_with("| `TOLLGATE_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            (ticks(cells[1]), ticks(cells[2]))
        })
        .collect()
}

#[test]
fn every_setting_is_documented_and_every_documented_one_is_read() {
    let known = tollgate::config::Settings::known_variables();
    let doc: Vec<String> = documented().into_iter().flat_map(|(v, _)| v).collect();
    for v in &doc {
        assert!(
            known.contains(v),
            "README documents {v}, which no setting reads"
        );
    }
    for v in &known {
        assert!(
            doc.contains(v),
            "{v} is read but README's settings table lacks it"
        );
    }
}

#[tokio::test]
async fn the_server_starts_with_every_documented_variable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    // Values where the default is none, or where the default would not do here (a fixed port).
    let samples: &[(&str, &str)] = &[
        ("TOLLGATE_DATABASE_URL", &db),
        ("TOLLGATE_BIND", "127.0.0.1:0"),
        ("TOLLGATE_JWT_SECRET", crate::helpers::SECRET),
        ("TOLLGATE_JWT_ISSUER", "https://issuer.example"),
        ("TOLLGATE_JWT_AUDIENCE", "tollgate"),
        ("TOLLGATE_CORS_ORIGINS", "https://app.example.com"),
        ("TOLLGATE_STRIPE_WEBHOOK_SECRET", "whsec_a,whsec_b"),
        ("TOLLGATE_STRIPE_CONNECT_WEBHOOK_SECRET", "whsec_c"),
        ("TOLLGATE_STRIPE_SECRET_KEY", "sk_test_x"),
    ];
    // Key sources exclusive with the secret: accepted (checked above), started separately.
    let exclusive = [
        "TOLLGATE_JWT_PUBLIC_KEY",
        "TOLLGATE_JWT_JWKS_URL",
        "TOLLGATE_JWT_JWKS_REFRESH",
    ];
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TOLLGATE_") {
            cmd.env_remove(k);
        }
    }
    let mut set = 0;
    for (vars, defaults) in documented() {
        for (i, var) in vars.iter().enumerate() {
            if exclusive.contains(&var.as_str()) {
                continue;
            }
            let value = match samples.iter().find(|(k, _)| k == var) {
                Some((_, v)) => (*v).to_owned(),
                None => defaults
                    .get(i)
                    .or(defaults.first().filter(|_| defaults.len() == 1))
                    .unwrap_or_else(|| panic!("{var}: no documented default to start with"))
                    .clone(),
            };
            cmd.env(var, value);
            set += 1;
        }
    }
    assert!(set > 30, "only {set} variables set");
    let mut child = cmd
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tollgate");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(a) = line.strip_prefix("tollgate listening on http://") {
                return Some(a.to_owned());
            }
        }
        None
    })
    .await
    .expect("the server answers within a minute");
    let Some(addr) = addr else {
        let out = child.wait_with_output().await.expect("output");
        panic!(
            "the server did not start with README's variables: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
}
