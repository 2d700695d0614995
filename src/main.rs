//! The `collabd` binary: parse flags, load settings, start logging, serve — or mint an
//! access token (`collabd token`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use collabd::auth::{self, Access, Audience, Claims};
use collabd::config::{Overrides, Settings};

/// A real-time collaborative state server for Yjs clients.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// TOML configuration file (default: ./collabd.toml if present).
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Create or migrate the PostgreSQL schema of `postgres_url`, then exit (the server
    /// also does this at startup; this is for operators who migrate as a separate step).
    Migrate,
    /// Print an access token signed with the configured auth_secret
    /// (from --config, collabd.toml or COLLABD_AUTH_SECRET).
    Token {
        /// Room name, or a prefix ending in `*` (`docs/*`; `*` is every room).
        #[arg(long)]
        room: String,
        /// Grant write access (default: read only).
        #[arg(long)]
        write: bool,
        /// Grant admin access: write, plus listing and deleting the rooms named, and
        /// revoking tokens when the room is `*`.
        #[arg(long, conflicts_with = "write")]
        admin: bool,
        /// Seconds until the token expires.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Optional subject (user id), logged by the server.
        #[arg(long)]
        sub: Option<String>,
        /// Audience (`aud`) [default: token_audience, if configured]
        #[arg(long)]
        aud: Option<String>,
        /// Issuer (`iss`) [default: token_issuer, if configured]
        #[arg(long)]
        iss: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    // Panics inside yrs on hostile input are contained (see `protocol::decode_update` and
    // the room's apply); they still deserve one log line each, not a raw stderr dump.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        log::error!("thread {:?} panicked: {info}", thread.name().unwrap_or("?"));
    }));
    let settings = match Settings::load(cli.config.as_deref(), &cli.overrides) {
        Ok(settings) => settings,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Token {
        room,
        write,
        admin,
        ttl,
        sub,
        aud,
        iss,
    }) = cli.command
    {
        let Some(secret) = settings.auth_secret.as_deref() else {
            log::error!("auth_secret is not configured; there is nothing to sign tokens with");
            return ExitCode::from(2);
        };
        let claims = Claims {
            room,
            perm: match (admin, write) {
                (true, _) => Access::Admin,
                (false, true) => Access::Write,
                (false, false) => Access::Read,
            },
            exp: auth::expiry_in(Duration::from_secs(ttl)),
            sub,
            aud: aud.or(settings.token_audience).map(Audience::One),
            iss: iss.or(settings.token_issuer),
            iat: Some(auth::now_secs()),
        };
        return match auth::mint(secret, &claims) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                log::error!("signing failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Migrate) = cli.command {
        return migrate(&settings);
    }
    match actix_rt::System::new().block_on(collabd::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "postgres")]
fn migrate(settings: &Settings) -> ExitCode {
    let Some(url) = settings.postgres_url.as_deref() else {
        log::error!("postgres_url is not configured; sled needs no migration");
        return ExitCode::from(2);
    };
    let migrated = postgres::Client::connect(url, postgres::NoTls)
        .map_err(collabd::store::StoreError::from)
        .and_then(|mut client| collabd::store::postgres::migrate(&mut client));
    match migrated {
        Ok(n) => {
            log::info!("postgres schema up to date ({n} migrations applied)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("migration failed: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "postgres"))]
fn migrate(_: &Settings) -> ExitCode {
    log::error!("this collabd was built without the `postgres` feature");
    ExitCode::from(2)
}
