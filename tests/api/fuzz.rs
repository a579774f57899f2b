//! schemathesis' GraphQL fuzzing against the real `tollgate` binary on a throwaway SQLite database:
//! once with a tenant ADMIN token and once with a platform token, each with a fixed seed and example
//! budget. It fails on any 5xx, empty or non-JSON reply, INTERNAL error, connection error or hang
//! (tests/fuzz/hooks.py, which also generates the Decimal scalar), and on a panic in the server's
//! log. tests/fuzz/schemathesis.toml feeds real metric and plan codes and the organization's id.
//!
//! schemathesis is the one pinned in tests/fuzz/requirements.txt, in a venv at target/fuzz-venv (made
//! and installed on first use when `python3` is there; `.ci/run` installs it), or the executable
//! named by `TOLLGATE_TEST_SCHEMATHESIS`. Without it the test says so and passes, unless
//! `TOLLGATE_TEST_REQUIRE_CLIENTS=1` (set by .ci/run) makes its absence a failure.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tollgate::auth::JwtKeys;
use tollgate::config::Settings;
use tollgate::domain::Role;

use crate::helpers::{PLATFORM_SUB, SECRET, database, post_graphql, tollgate_cli};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
/// Test cases per GraphQL operation and per token: the two runs take about 90 s on an idle 2-core
/// machine (20 operations for the tenant, 30 and stateful scenarios for the platform team).
const MAX_EXAMPLES: &str = "50";
const SEED: &str = "20260101";
/// One schemathesis run longer than this is a hang.
const RUN_LIMIT: Duration = Duration::from_secs(150);

fn required() -> bool {
    std::env::var("TOLLGATE_TEST_REQUIRE_CLIENTS").is_ok_and(|v| v == "1")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn runs(exe: &Path) -> bool {
    Command::new(exe)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}

/// The schemathesis executable, installing the pinned one into target/fuzz-venv when it is missing.
async fn schemathesis() -> Result<PathBuf, String> {
    if let Some(exe) = std::env::var_os("TOLLGATE_TEST_SCHEMATHESIS") {
        let exe = PathBuf::from(exe);
        return if runs(&exe).await {
            Ok(exe)
        } else {
            Err(format!(
                "TOLLGATE_TEST_SCHEMATHESIS={} does not run",
                exe.display()
            ))
        };
    }
    let venv = root().join("target/fuzz-venv");
    let exe = venv.join("bin/schemathesis");
    if runs(&exe).await {
        return Ok(exe);
    }
    let step = |what: &'static str, out: std::io::Result<std::process::Output>| match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("{what}: {e}")),
    };
    step(
        "python3 -m venv target/fuzz-venv",
        Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .await,
    )?;
    step(
        "pip install -r tests/fuzz/requirements.txt",
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "-r"])
            .arg(root().join("tests/fuzz/requirements.txt"))
            .output()
            .await,
    )?;
    if runs(&exe).await {
        Ok(exe)
    } else {
        Err(format!("{} does not run after its install", exe.display()))
    }
}

fn token(sub: &str, org: Option<&str>, role: Option<Role>) -> String {
    let settings = Settings::parse_from_env_and(&["--jwt-secret", SECRET]).unwrap();
    JwtKeys::from_settings(&settings)
        .unwrap()
        .mint(sub, org, role, Duration::from_secs(3600))
        .unwrap()
}

/// `tollgate serve` on a free port, its environment cleared, its log (stderr) in `log`.
async fn serve(db: &str, log: &Path) -> (tokio::process::Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "--database-url",
            db,
            "--bind",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
            // The ADMIN token's 100 queries a minute would answer most cases RATE_LIMITED and
            // leave the resolvers unreached.
            "--rate-limits",
            "off",
            "serve",
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tollgate serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(a) = line.strip_prefix("tollgate listening on http://") {
                return a.trim().to_owned();
            }
        }
        panic!(
            "the server exited: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    })
    .await
    .expect("the server starts within 60s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("http://{addr}/graphql"))
}

/// One schemathesis run against `url` as `bearer`, configured by `config`; answers (passed, its
/// output).
async fn fuzz(exe: &Path, config: &Path, url: &str, bearer: &str) -> (bool, String) {
    let started = Instant::now();
    let auth = format!("Authorization: Bearer {bearer}");
    let mut cmd = Command::new(exe);
    cmd.arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(url)
        .args(["-H", &auth])
        .args(["--checks", "tollgate_server_failure"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        .args(["--workers", "1", "--request-timeout", "20"])
        .args(["--suppress-health-check", "all"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--output-sanitize", "false"])
        .env("SCHEMATHESIS_HOOKS", root().join("tests/fuzz/hooks.py"))
        .env("NO_COLOR", "1")
        .current_dir(config.parent().unwrap())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(RUN_LIMIT, cmd.output()).await {
        Ok(out) => out.expect("run schemathesis"),
        Err(_) => {
            return (
                false,
                format!("schemathesis did not finish within {RUN_LIMIT:?} (a hang?)"),
            );
        }
    };
    let text = format!(
        "{}{}\n(schemathesis took {:.0?})",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        started.elapsed()
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error() {
    let exe = match schemathesis().await {
        Ok(exe) => exe,
        Err(why) if !required() => {
            eprintln!("skipping the schemathesis fuzzing: {why}");
            return;
        }
        Err(why) => panic!("schemathesis: {why} (TOLLGATE_TEST_REQUIRE_CLIENTS=1)"),
    };
    let (db, _guard) = database(crate::helpers::Engine::Sqlite).expect("SQLite");
    let (ok, out) = tollgate_cli(&db, &["platform-team", "add", PLATFORM_SUB]).await;
    assert!(ok, "{out}");
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("server.log");
    let (mut server, url) = serve(&db, &log).await;

    let platform = token(PLATFORM_SUB, None, None);
    let (_, body) = post_graphql(
        &reqwest::Client::new(),
        &url,
        Some(&platform),
        "mutation($i: CreateOrganizationInput!) { createOrganization(input: $i) { id } }",
        json!({ "i": { "name": "Acme", "slug": "acme", "planCode": "basic" } }),
    )
    .await
    .expect("createOrganization");
    let org = body["data"]["createOrganization"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    let admin = token("fuzz-admin", Some(&org), Some(Role::Admin));
    // The configuration's dictionaries, with this organization's id.
    let config = work.path().join("schemathesis.toml");
    let template = std::fs::read_to_string(root().join("tests/fuzz/schemathesis.toml")).unwrap();
    std::fs::write(&config, template.replace("@ORGANIZATION_ID@", &org)).unwrap();

    let mut failures = Vec::new();
    for (who, bearer) in [("tenant ADMIN", &admin), ("platform", &platform)] {
        let (passed, output) = fuzz(&exe, &config, &url, bearer).await;
        println!("==== schemathesis as {who} ====\n{output}");
        if !passed {
            failures.push(format!("==== schemathesis as {who} ====\n{output}"));
        }
    }
    let alive = server.try_wait().is_ok_and(|s| s.is_none());
    let _ = server.kill().await;
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    if !alive {
        failures.push(format!("the server exited during the fuzzing:\n{log}"));
    }
    if log.contains("panicked") {
        failures.push(format!("the server panicked:\n{log}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
