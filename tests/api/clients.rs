//! Real clients against the real server, from the Node scripts in tests/node: the graphql-http server
//! audit, a graphql-ws subscriber, and GraphiQL in headless Chromium.
//!
//! They need Node and npm (tests/node's packages are installed on first use with `npm ci`) and, for
//! the browser, Chromium. Without them these tests say so and pass, unless
//! `TOLLGATE_TEST_REQUIRE_CLIENTS=1` (set by .ci/run) makes a missing tool a failure.

use std::path::PathBuf;
use std::process::Stdio;

use tollgate::domain::Role;

use crate::both_engines;
use crate::helpers::TestApp;

pub(crate) fn required() -> bool {
    std::env::var("TOLLGATE_TEST_REQUIRE_CLIENTS").is_ok_and(|v| v == "1")
}

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

/// tests/node with its packages installed, or None (and why) when Node or npm is missing.
async fn node_ready() -> Result<PathBuf, String> {
    static INSTALL: tokio::sync::OnceCell<Result<(), String>> = tokio::sync::OnceCell::const_new();
    let dir = node_dir();
    INSTALL
        .get_or_init(|| async {
            let node = tokio::process::Command::new("node")
                .arg("--version")
                .output()
                .await;
            if !node.is_ok_and(|o| o.status.success()) {
                return Err("node is not installed".to_owned());
            }
            // Installed, and not older than the lock (a package added since is installed now).
            let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let installed = modified(dir.join("node_modules/.package-lock.json"));
            if installed.is_some() && installed >= modified(dir.join("package-lock.json")) {
                return Ok(());
            }
            let out = tokio::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(node_dir())
                .output()
                .await
                .map_err(|e| format!("npm is not installed: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "npm ci failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .await
        .clone()
        .map(|_| dir)
}

/// Runs a Node script; answers (exit code, stdout, stderr), or None when Node is unavailable and not
/// required.
pub(crate) async fn node(script: &str, args: &[&str]) -> Option<(i32, String, String)> {
    let dir = match node_ready().await {
        Ok(d) => d,
        Err(why) if !required() => {
            eprintln!("skipping {script}: {why}");
            return None;
        }
        Err(why) => panic!("{script}: {why} (TOLLGATE_TEST_REQUIRE_CLIENTS=1)"),
    };
    let out = tokio::process::Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run node");
    let result = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    println!("{}{}", result.1, result.2);
    Some(result)
}

async fn graphql_http_audit(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let token = app.tenant_token(&org, Role::Viewer);
    let Some((code, out, err)) = node("audit.mjs", &[&app.url("/graphql"), &token]).await else {
        return;
    };
    assert_eq!(code, 0, "graphql-http audit failed:\n{out}\n{err}");
    let summary = out
        .lines()
        .find_map(|l| l.strip_prefix("AUDIT "))
        .expect("an AUDIT summary line");
    let summary: serde_json::Value = serde_json::from_str(summary).unwrap();
    assert_eq!(summary["must_failures"], 0, "{summary}");
    assert!(summary["audits"].as_u64().unwrap() > 50, "{summary}");
}
both_engines!(audit, super::graphql_http_audit);

async fn graphql_ws_client_receives_its_alerts(app: TestApp) {
    let a = app.create_org("alpha", "basic").await;
    let b = app.create_org("bravo", "basic").await;
    let args = [
        app.url(""),
        app.tenant_token(&a, Role::Viewer),
        app.tenant_token(&a, Role::Service),
        app.tenant_token(&b, Role::Viewer),
        a.clone(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let Some((code, out, err)) = node("ws-alerts.mjs", &args).await else {
        return;
    };
    assert_eq!(code, 0, "graphql-ws scenario failed:\n{out}\n{err}");
    assert!(out.contains("alert delivery after the mutation answered"));
}
both_engines!(graphql_ws, super::graphql_ws_client_receives_its_alerts);

/// The browser does not care which database answers: SQLite only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graphiql_renders_and_runs_a_query_in_chromium() {
    let Some(app) = crate::helpers::spawn_app(crate::helpers::Engine::Sqlite, &[]).await else {
        return;
    };
    let org = app.create_org("acme", "basic").await;
    let token = app.tenant_token(&org, Role::Admin);
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("graphiql.png");
    let shot = shot.to_string_lossy().into_owned();
    let Some((code, out, err)) = node("browser.mjs", &[&app.url(""), &token, &shot]).await else {
        return;
    };
    if code == 3 && !required() {
        eprintln!("skipping the browser check: {err}");
        return;
    }
    assert_eq!(code, 0, "GraphiQL in Chromium failed:\n{out}\n{err}");
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000));
}
