//! The dashboard and the `<tollgate-usage>` widget: served offline from the binary, rebuilt from
//! source to exactly the committed files, and driven in Chromium by Playwright
//! (tests/node/dashboard.mjs).

use std::path::{Path, PathBuf};

use serde_json::json;
use tollgate::domain::Role;

use crate::clients::{node, required};
use crate::helpers::{Engine, spawn_app};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// CI (or TOLLGATE_TEST_REQUIRE_CLIENTS=1) turns a missing Node into a failure.
fn node_required() -> bool {
    required() || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

#[tokio::test]
async fn dashboard_is_served_offline_with_its_assets() {
    let Some(app) = spawn_app(Engine::Sqlite, &[]).await else {
        return;
    };
    let client = reqwest::Client::new();
    let page = client.get(app.url("/dashboard")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    // Everything the page loads comes from this server.
    assert!(html.contains(r#"src="/dashboard/dashboard.js""#), "{html}");
    assert!(
        html.contains(r#"href="/dashboard/dashboard.css""#),
        "{html}"
    );
    assert!(!html.contains("https://"), "{html}");

    let mut total = 0;
    for (name, ty) in [
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("tollgate-usage.js", "text/javascript"),
    ] {
        let resp = client
            .get(app.url(&format!("/dashboard/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(ty)
        );
        assert_eq!(resp.headers()["cache-control"], "no-cache");
        let tag = resp.headers()["etag"].clone();
        let body = resp.bytes().await.unwrap();
        assert_eq!(
            body.as_ref(),
            std::fs::read(repo().join("assets/dashboard").join(name)).unwrap(),
            "{name} is not the committed file"
        );
        if name != "tollgate-usage.js" {
            total += body.len();
        }
        // Revalidation costs no body.
        let again = client
            .get(app.url(&format!("/dashboard/{name}")))
            .header("if-none-match", tag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{name}");
    }
    // The first view's budget is 150 KB gzipped; the files fit it even uncompressed.
    assert!(total < 150 * 1024, "the first view is {total} bytes");
    let missing = client
        .get(app.url("/dashboard/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        // What npm ci and the build make, not the sources.
        if name == "node_modules" || name == "generated" {
            continue;
        }
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).unwrap();
        }
    }
}

async fn run(dir: &Path, program: &str, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .map_err(|e| format!("{program} did not start: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{program} {}: {text}", args.join(" ")))
    }
}

/// `npm ci && npm run build` on a copy of dashboard/ and schema.graphql must give exactly the files
/// committed under assets/dashboard: the binary embeds what the sources say, and a schema change
/// that breaks the dashboard's operations or types fails here.
#[tokio::test]
async fn committed_dashboard_assets_rebuild_from_source() {
    let has_node = tokio::process::Command::new("node")
        .arg("--version")
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if !has_node {
        assert!(
            !node_required(),
            "node is required to rebuild the dashboard (CI or TOLLGATE_TEST_REQUIRE_CLIENTS=1)"
        );
        eprintln!(
            "skipping the dashboard rebuild check: node is not installed (CI would fail here)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("dashboard");
    copy_tree(&repo().join("dashboard"), &src);
    std::fs::copy(
        repo().join("schema.graphql"),
        tmp.path().join("schema.graphql"),
    )
    .unwrap();
    run(&src, "npm", &["ci", "--no-audit", "--no-fund"])
        .await
        .unwrap_or_else(|e| panic!("npm ci: {e}"));
    let log = run(&src, "npm", &["run", "build"])
        .await
        .unwrap_or_else(|e| panic!("the dashboard does not build from source: {e}"));
    println!("{log}");

    let built = tmp.path().join("assets/dashboard");
    let committed = repo().join("assets/dashboard");
    let names = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&built),
        names(&committed),
        "assets/dashboard has other files than the build makes: run `npm ci && npm run build` in dashboard/ and commit assets/dashboard"
    );
    for name in names(&built) {
        assert!(
            std::fs::read(built.join(&name)).unwrap()
                == std::fs::read(committed.join(&name)).unwrap(),
            "assets/dashboard/{name} differs from what dashboard/ builds: run `npm ci && npm run build` in dashboard/ and commit assets/dashboard"
        );
    }
}

/// Playwright drives Chromium through both views and the widget (tests/node/dashboard.mjs says what
/// it checks); the data is made here through the API. SQLite only: the browser does not care.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_and_widget_in_chromium() {
    let Some(app) = spawn_app(Engine::Sqlite, &[]).await else {
        return;
    };
    let acme = app.create_org("acme", "basic").await;
    let bravo = app.create_org("bravo", "basic").await;
    let charlie = app.create_org("charlie", "growth").await;
    let delta = app.create_org("delta", "basic").await;
    // At or above 80%: charlie 105% (in overage), bravo 95%, acme 85%; delta 10% is not.
    for (org, quantity) in [
        (&acme, "85"),
        (&bravo, "95"),
        (&charlie, "1050"),
        (&delta, "10"),
    ] {
        let body = app
            .record(&app.tenant_token(org, Role::Service), "bookings", quantity)
            .await;
        assert_eq!(body["data"]["recordUsage"]["accepted"], true, "{body}");
    }
    let staff = app
        .record(&app.tenant_token(&bravo, Role::Service), "staff", "2")
        .await;
    assert_eq!(staff["data"]["recordUsage"]["accepted"], true, "{staff}");

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let config = json!({
        "base": app.url(""),
        "shots": shots,
        "orgs": { "acme": acme, "bravo": bravo, "charlie": charlie, "delta": delta },
        "tokens": {
            "platform": app.platform_token(),
            "acmeAdmin": app.tenant_token(&acme, Role::Admin),
            "acmeService": app.tenant_token(&acme, Role::Service),
            "bravoViewer": app.tenant_token(&bravo, Role::Viewer),
            "bravoService": app.tenant_token(&bravo, Role::Service),
            "deltaService": app.tenant_token(&delta, Role::Service),
        },
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), config.to_string()).unwrap();
    let path = file.path().to_string_lossy().into_owned();
    let Some((code, out, err)) = node("dashboard.mjs", &[&path]).await else {
        return;
    };
    if code == 3 && !required() {
        eprintln!("skipping the dashboard in Chromium: {err}");
        return;
    }
    assert_eq!(code, 0, "the dashboard in Chromium failed:\n{out}\n{err}");
    for shot in [
        "dashboard-org.png",
        "dashboard-org-360.png",
        "dashboard-platform.png",
        "dashboard-platform-360.png",
        "widget.png",
    ] {
        assert!(
            std::fs::metadata(shots.join(shot)).is_ok_and(|m| m.len() > 5_000),
            "no screenshot {shot}"
        );
    }
}
