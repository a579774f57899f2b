//! The command line: serve (default), migrate, platform-team, token, recompute.

use std::process::ExitCode;

use secrecy::ExposeSecret;

use crate::app::{AppState, Application, shutdown_signal};
use crate::auth::JwtKeys;
use crate::config::{
    Cli, Command, PlatformTeamCommand, RecomputeArgs, ServeArgs, Settings, TokenArgs,
};
use crate::domain::Role;
use crate::store;

pub async fn run(cli: Cli) -> ExitCode {
    init_tracing(cli.settings.log_json);
    if let Err(e) = Settings::check_environment().and_then(|_| cli.settings.validate()) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        None => serve(cli.settings, ServeArgs::default()).await,
        Some(Command::Serve(args)) => serve(cli.settings, args).await,
        Some(Command::Migrate) => migrate(cli.settings).await,
        Some(Command::PlatformTeam(cmd)) => platform_team(cli.settings, cmd).await,
        Some(Command::Token(args)) => token(cli.settings, args),
        Some(Command::Recompute(args)) => recompute(cli.settings, args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn serve(settings: Settings, args: ServeArgs) -> anyhow::Result<()> {
    let keys = JwtKeys::from_settings_async(&settings)
        .await
        .map_err(anyhow::Error::msg)?;
    if keys.ephemeral {
        tracing::warn!(
            "--dev: using an ephemeral signing key generated at boot; tokens die with this process"
        );
    }
    tracing::info!(database = %settings.database_url_redacted(), "connecting and migrating");
    let state = AppState::new(settings, keys).await?;
    if args.demo {
        let orgs = crate::demo::seed(&state.engine).await?;
        for (name, id) in &orgs {
            tracing::info!(organization = %name, id = %id, "demo organization ready");
        }
        if let Some((_, id)) = orgs.first()
            && let Ok(t) = state.keys.mint(
                "demo-admin",
                Some(&id.to_string()),
                Some(Role::Admin),
                std::time::Duration::from_secs(86400),
            )
        {
            println!("demo token (ADMIN of {id}, 24h):\n{t}");
            println!(
                "playground with this token: http://{}/#token={t}",
                state.settings.bind
            );
            println!(
                "dashboard of this organization: http://{}/dashboard#token={t}",
                state.settings.bind
            );
        }
        // The platform team's view needs a member: the demo's own (a token for it can only be
        // minted with the server's key, which can mint any member's token anyway).
        if let Ok(t) = state.keys.mint(
            crate::demo::PLATFORM_SUB,
            None,
            None,
            std::time::Duration::from_secs(86400),
        ) {
            println!(
                "platform dashboard ({} of the platform team, 24h): http://{}/dashboard#token={t}",
                crate::demo::PLATFORM_SUB,
                state.settings.bind
            );
        }
    }
    let app = Application::build(state).await?;
    let addr = app.local_addr()?;
    tracing::info!("listening on http://{addr} (playground at /, GraphQL at /graphql)");
    println!("tollgate listening on http://{addr}");
    app.run_until(shutdown_signal()).await?;
    Ok(())
}

async fn connect_migrated(settings: &Settings) -> anyhow::Result<sea_orm::DatabaseConnection> {
    let (db, _) = store::connect(
        settings.database_url.expose_secret(),
        2,
        settings.db_statement_timeout,
    )
    .await?;
    store::migrate(&db).await?;
    Ok(db)
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    connect_migrated(&settings).await?;
    println!("migrations applied to {}", settings.database_url_redacted());
    Ok(())
}

async fn platform_team(settings: Settings, cmd: PlatformTeamCommand) -> anyhow::Result<()> {
    let db = connect_migrated(&settings).await?;
    match cmd {
        PlatformTeamCommand::Add { sub } => {
            store::team::add(&db, &sub, Some("cli")).await?;
            println!("{sub} is on the platform team");
        }
        PlatformTeamCommand::Remove { sub } => {
            if store::team::remove(&db, &sub).await? {
                println!("{sub} removed from the platform team");
            } else {
                anyhow::bail!("{sub} is not on the platform team");
            }
        }
        PlatformTeamCommand::List => {
            for m in store::team::list(&db).await? {
                println!(
                    "{}\tadded {}",
                    m.sub,
                    m.created_at.format("%Y-%m-%d %H:%M UTC")
                );
            }
        }
    }
    Ok(())
}

fn token(settings: Settings, args: TokenArgs) -> anyhow::Result<()> {
    if settings.jwt_jwks_url.is_some() {
        anyhow::bail!(
            "tokens cannot be minted with TOLLGATE_JWT_JWKS_URL: the identity provider holds the signing keys, \
             so ask it for a token (or set TOLLGATE_JWT_SECRET instead)"
        );
    }
    let keys = JwtKeys::from_settings(&settings).map_err(anyhow::Error::msg)?;
    if keys.ephemeral {
        anyhow::bail!(
            "an ephemeral --dev key dies with its process: set TOLLGATE_JWT_SECRET to mint usable tokens"
        );
    }
    let role = match args.role.as_deref() {
        Some(r) => Some(Role::parse(r).ok_or_else(|| {
            anyhow::anyhow!("unknown role {r:?}: OWNER, ADMIN, MEMBER, VIEWER, SERVICE or CUSTOMER")
        })?),
        None => None,
    };
    if let Some(org) = &args.org {
        uuid::Uuid::parse_str(org)
            .map_err(|_| anyhow::anyhow!("--org must be an organization id (a UUID)"))?;
    }
    if args.org.is_some() != role.is_some() {
        eprintln!(
            "note: a tenant token needs both --org and --role; without them only a platform-team member's token works"
        );
    }
    let token = keys
        .mint(&args.sub, args.org.as_deref(), role, args.ttl)
        .map_err(anyhow::Error::msg)?;
    println!("{token}");
    Ok(())
}

/// Organizations above which a terminal gets a progress bar.
const PROGRESS_BAR_FROM: usize = 20;

async fn recompute(settings: Settings, args: RecomputeArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;

    use crate::domain::{OrganizationId, Scope};

    let db = connect_migrated(&settings).await?;
    let engine = crate::domain::usage::Engine::new(db, &settings);
    let orgs = match &args.org {
        Some(id) => {
            let id = OrganizationId(
                uuid::Uuid::parse_str(id)
                    .map_err(|_| anyhow::anyhow!("--org must be an organization id (a UUID)"))?,
            );
            if store::orgs::find(&engine.db, Scope::Platform, id)
                .await?
                .is_none()
            {
                anyhow::bail!("no organization {}", id.0);
            }
            vec![id]
        }
        None => {
            use sea_orm::Iterable;
            let every: Vec<_> = entity::enums::OrganizationStatus::iter().collect();
            store::orgs::ids_with_status(&engine.db, Scope::Platform, &every).await?
        }
    };
    let bar = (orgs.len() >= PROGRESS_BAR_FROM && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(orgs.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} recompute [{bar:40}] {pos}/{len} organizations, {elapsed} elapsed, eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let (mut counters, mut differences) = (0usize, 0usize);
    for org in &orgs {
        let report = engine
            .recompute_org(*org, args.period, !args.check)
            .await
            .map_err(|e| anyhow::anyhow!("organization {}: {e:?}", org.0))?;
        counters += report.counters;
        differences += report.differences.len();
        for d in &report.differences {
            match &bar {
                Some(bar) => bar.println(d.to_string()),
                None => println!("{d}"),
            }
        }
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // A full repair also completes the current period's utilization index (a no-op when the server
    // already did).
    let now = crate::domain::Period::current();
    if !args.check && args.org.is_none() && args.period.is_none_or(|p| p == now) {
        engine
            .materialize_period(now)
            .await
            .map_err(|e| anyhow::anyhow!("the utilization index: {e:?}"))?;
    }
    let outcome = match (differences, args.check) {
        (0, _) => "no difference",
        (_, true) => "differences found, nothing changed (--check)",
        (_, false) => "differences repaired",
    };
    println!(
        "recompute: organizations {}, counters {counters}, differences {differences}: {outcome}",
        orgs.len()
    );
    if args.check && differences > 0 {
        anyhow::bail!("{differences} counters or flags differ from the ledger");
    }
    Ok(())
}
