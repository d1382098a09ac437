//! The upgrade check before a deploy: which sagas in flight the build about to ship could not
//! resume (see [`check`] for what it looks at), as a library call and as a command line for a
//! binary of yours, since only your binary knows your saga definitions.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use saga::{Saga, SagaDefinition, Step, StepContext, StepError};
//! # struct CheckoutV1;
//! # struct Checkout;
//! # async fn reserve<S>(_: Arc<S>, _: StepContext<u32>) -> Result<(), StepError> { Ok(()) }
//! # impl Saga for CheckoutV1 {
//! #     type Input = u32;
//! #     fn definition() -> SagaDefinition<Self> {
//! #         SagaDefinition::new("checkout", 1).step(Step::new("reserve_stock", reserve).irreversible())
//! #     }
//! # }
//! # impl Saga for Checkout {
//! #     type Input = u32;
//! #     fn definition() -> SagaDefinition<Self> {
//! #         SagaDefinition::new("checkout", 2).step(Step::new("reserve_stock", reserve).irreversible())
//! #     }
//! # }
//! // src/bin/upgrade-check.rs of your service: `upgrade-check --db postgres://...` exits 0 when
//! // this build resumes every saga in flight, 6 when it would strand some.
//! use saga::upgrade::{self, Definitions};
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     let definitions = Definitions::new().with::<CheckoutV1>().with::<Checkout>();
//!     upgrade::main_with(&definitions, std::env::args().skip(1)).await
//! }
//! ```

use std::process::ExitCode;

pub use saga_core::upgrade::{
    check, Check, Definition, Definitions, Finding, FindingKind, Group, StatusCounts, StepMismatch,
    UpgradeReport, IN_FLIGHT, STRANDED_EXIT_CODE,
};

use saga_core::Error;

/// What `--help` prints.
const HELP: &str = "\
Checks whether this build can resume every saga in flight in a store (running, compensating,
needs_intervention): each saga's type and version must be registered, with the fingerprint it
started with, the steps it recorded at their index, and an input that decodes. Writes nothing,
migrates nothing.

Options:
  --db URL          the store: sqlite://path.db or postgres://user:password@host/database
                    (default: $SAGA_DATABASE_URL)
  --schema NAME     Postgres schema holding the saga tables (default: $SAGA_SCHEMA, else saga)
  --json            print the report as JSON
  --examples N      example saga ids per finding (default 5)
  --definitions     print this build's saga definitions (type, version, fingerprint, steps)
                    and exit; needs no store
  -h, --help        print this help

Exit codes:
  0  compatible: this build resumes every saga in flight
  6  this build would strand sagas in flight (the report says which and why)
  2  bad input: arguments, store URL, a store without saga tables or at another schema version
  5  store unavailable (safe to retry)
  1  anything else";

/// The upgrade check as a command line: reads `args` (without the program name), checks the
/// store they name against `definitions`, prints the report to stdout (as JSON with `--json`)
/// and returns the exit code: 0 compatible, [`STRANDED_EXIT_CODE`] (6) when sagas would be
/// stranded, 2 for bad input, 5 when the store is unavailable, 1 for anything else. Errors go to
/// stderr, saying what was wrong and what to do. See the module docs for a binary calling it,
/// and `--help` for the options.
///
/// The store is opened as it is: nothing is created or migrated, and a schema other than this
/// build's is refused (exit 2) with the version found, since the check reads the store as this
/// build would.
pub async fn main_with(
    definitions: &Definitions,
    args: impl IntoIterator<Item = String>,
) -> ExitCode {
    match run(definitions, args).await {
        Ok((output, code)) => {
            print!("{output}");
            ExitCode::from(code)
        }
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// A failure with its exit code.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::StoreUnavailable(_) => 5,
            Error::Configuration(_) => 2,
            _ => 1,
        };
        Failure {
            code,
            message: err.to_string(),
        }
    }
}

fn bad_input(message: String) -> Failure {
    Failure { code: 2, message }
}

/// The command line, parsed.
#[derive(Debug, Default, PartialEq)]
struct Args {
    db: Option<String>,
    schema: Option<String>,
    json: bool,
    examples: Option<usize>,
    definitions: bool,
    help: bool,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, Failure> {
    let mut parsed = Args::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| bad_input(format!("{name} needs a value; see --help")))
        };
        match flag.as_str() {
            "--db" => parsed.db = Some(value("--db")?),
            "--schema" => parsed.schema = Some(value("--schema")?),
            "--examples" => {
                let text = value("--examples")?;
                parsed.examples = Some(text.parse().map_err(|_| {
                    bad_input(format!(
                        "--examples `{text}` is not a count; give a whole number such as 5"
                    ))
                })?);
            }
            "--json" if inline.is_none() => parsed.json = true,
            "--definitions" if inline.is_none() => parsed.definitions = true,
            "-h" | "--help" if inline.is_none() => parsed.help = true,
            _ => {
                return Err(bad_input(format!(
                    "unknown argument `{arg}`; expected --db URL, --schema NAME, --json, --examples N, --definitions or --help"
                )))
            }
        }
    }
    Ok(parsed)
}

/// Runs the command: what to print on stdout, and the exit code.
async fn run(
    definitions: &Definitions,
    args: impl IntoIterator<Item = String>,
) -> Result<(String, u8), Failure> {
    let args = parse(args)?;
    if args.help {
        return Ok((format!("{HELP}\n"), 0));
    }
    if args.definitions {
        return Ok((describe(definitions, args.json)?, 0));
    }
    if definitions.is_empty() {
        return Err(bad_input(
            "no saga definitions given: every saga in flight would count as stranded; pass the definitions this build registers (Definitions::new().with::<YourSaga>())".into(),
        ));
    }
    let db = args
        .db
        .or_else(|| std::env::var("SAGA_DATABASE_URL").ok())
        .filter(|db| !db.trim().is_empty())
        .ok_or_else(|| {
            bad_input(
                "no store given; pass --db sqlite://path.db (or postgres://...) or set SAGA_DATABASE_URL".into(),
            )
        })?;
    let schema = args
        .schema
        .or_else(|| std::env::var("SAGA_SCHEMA").ok())
        .filter(|schema| !schema.trim().is_empty());
    let check = args.examples.map_or_else(Check::default, |examples| {
        Check::default().examples(examples)
    });
    let report = open::checked(&db, schema, definitions, check).await?;
    let output = if args.json {
        serde_json::to_string_pretty(&report)
            .map(|text| text + "\n")
            .map_err(not_json)?
    } else {
        report.to_string()
    };
    Ok((output, report.exit_code()))
}

/// This build's definitions, one line each (or as JSON).
fn describe(definitions: &Definitions, as_json: bool) -> Result<String, Failure> {
    if as_json {
        return serde_json::to_string_pretty(definitions)
            .map(|text| text + "\n")
            .map_err(not_json);
    }
    Ok(definitions
        .iter()
        .map(|definition| {
            let steps: Vec<&str> = definition
                .steps()
                .iter()
                .map(|step| step.as_str())
                .collect();
            format!(
                "{} v{} (fingerprint {}): {}\n",
                definition.saga_type(),
                definition.version(),
                definition.fingerprint(),
                steps.join(", ")
            )
        })
        .collect())
}

fn not_json(err: serde_json::Error) -> Failure {
    Failure {
        code: 1,
        message: format!("the output does not serialize as JSON: {err}"),
    }
}

/// Opening the store as it is, for the check.
mod open {
    use super::{bad_input, Check, Definitions, Failure, UpgradeReport};

    /// Opens the store `url` names without creating or migrating anything, refuses a schema
    /// other than this build's, and checks it.
    pub(super) async fn checked(
        url: &str,
        schema: Option<String>,
        definitions: &Definitions,
        check: Check,
    ) -> Result<UpgradeReport, Failure> {
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if let Some(schema) = schema.as_ref().filter(|_| !postgres) {
            return Err(bad_input(format!(
                "--schema `{schema}` (or SAGA_SCHEMA) names a Postgres schema, and this store is not Postgres; drop it for this store"
            )));
        }
        if postgres {
            return postgres_checked(url, schema, definitions, check).await;
        }
        if url.starts_with("sqlite:") {
            return sqlite_checked(url, definitions, check).await;
        }
        if url == "memory:" {
            return Err(bad_input(
                "`memory:` is empty outside the process that made it; point --db at the store your service uses".into(),
            ));
        }
        Err(bad_input(format!(
            "unsupported store URL `{}`; use sqlite://path/to/file.db or postgres://user:password@host/database",
            url.split('@').next_back().unwrap_or(url)
        )))
    }

    #[cfg(feature = "sqlite")]
    async fn sqlite_checked(
        url: &str,
        definitions: &Definitions,
        check: Check,
    ) -> Result<UpgradeReport, Failure> {
        use saga_store::{SqliteOptions, SqliteStore};

        let path = url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:");
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() || path == ":memory:" {
            return Err(bad_input(format!(
                "`{url}` is an in-memory database, empty outside the process that made it; point --db at the file your service uses"
            )));
        }
        if !std::path::Path::new(path).exists() {
            return Err(bad_input(format!(
                "no SQLite database at `{path}`; check --db (the check never creates one)"
            )));
        }
        let options = SqliteOptions {
            migrate: false,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::connect_with(url, options).await?;
        refuse_other_schema(&saga_store::sqlite_schema(store.pool()).await?, None)?;
        Ok(check.run(&store, definitions).await?)
    }

    #[cfg(not(feature = "sqlite"))]
    async fn sqlite_checked(_: &str, _: &Definitions, _: Check) -> Result<UpgradeReport, Failure> {
        Err(bad_input(
            "this build has no SQLite backend; enable the `sqlite` feature of `saga`".into(),
        ))
    }

    #[cfg(feature = "postgres")]
    async fn postgres_checked(
        url: &str,
        schema: Option<String>,
        definitions: &Definitions,
        check: Check,
    ) -> Result<UpgradeReport, Failure> {
        use saga_store::{PgOptions, PgStore};

        let options = PgOptions {
            migrate: false,
            listen: false,
            schema: schema.unwrap_or_else(|| PgOptions::default().schema),
            ..PgOptions::default()
        };
        let schema = options.schema.clone();
        let store = PgStore::connect_with(url, options).await?;
        let checked = async {
            refuse_other_schema(
                &saga_store::postgres_schema(store.pool(), &schema).await?,
                Some(&schema),
            )?;
            Ok(check.run(&store, definitions).await?)
        }
        .await;
        store.close().await;
        checked
    }

    #[cfg(not(feature = "postgres"))]
    async fn postgres_checked(
        _: &str,
        _: Option<String>,
        _: &Definitions,
        _: Check,
    ) -> Result<UpgradeReport, Failure> {
        Err(bad_input(
            "this build has no Postgres backend; enable the `postgres` feature of `saga`".into(),
        ))
    }

    /// Refuses (exit 2) a schema other than this build's: the check reads the store as this
    /// build would, and never migrates it.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    fn refuse_other_schema(
        state: &saga_store::SchemaState,
        postgres_schema: Option<&str>,
    ) -> Result<(), Failure> {
        if let Some(version) = state.failed.first() {
            return Err(bad_input(format!(
                "schema migration {version} is recorded as failed (it stopped part-way); repair it as `saga migrate` explains before checking"
            )));
        }
        if let Some(version) = state.unknown().last() {
            return Err(bad_input(format!(
                "the store's schema is at version {version}, newer than this build knows (it ends at version {}): a newer release migrated it; check with a build of that release or later",
                state.latest()
            )));
        }
        match state.version() {
            _ if state.is_current() => Ok(()),
            None => Err(bad_input(match postgres_schema {
                Some(schema) => format!(
                    "Postgres schema `{schema}` holds no saga tables; check --db, or pass --schema NAME (or set SAGA_SCHEMA) if the store lives in another schema"
                ),
                None => "this database holds no saga tables; check --db".to_owned(),
            })),
            Some(version) => Err(bad_input(format!(
                "the store's schema is at version {version} and this build expects version {} (not applied: {}); the check reads the store as this build would and never migrates it: apply the migrations first (`saga migrate` of this release), then check again",
                state.latest(),
                state
                    .pending()
                    .iter()
                    .map(|info| format!("{} {}", info.version, info.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(args: &[&str]) -> Result<Args, Failure> {
        parse(args.iter().map(|arg| (*arg).to_owned()))
    }

    #[test]
    fn flags_parse_with_a_space_or_an_equals_sign() {
        let parsed = args(&[
            "--db",
            "sqlite://a.db",
            "--schema=shop",
            "--json",
            "--examples=3",
        ])
        .map_err(|failure| failure.message);
        assert_eq!(
            parsed,
            Ok(Args {
                db: Some("sqlite://a.db".into()),
                schema: Some("shop".into()),
                json: true,
                examples: Some(3),
                definitions: false,
                help: false,
            })
        );
    }

    #[test]
    fn bad_arguments_are_bad_input_saying_what_is_expected() {
        for bad in [
            &["--db"][..],
            &["--examples", "many"],
            &["--verbose"],
            &["--json=yes"],
        ] {
            let Err(failure) = args(bad) else {
                panic!("{bad:?} must be refused");
            };
            assert_eq!(failure.code, 2, "{bad:?}");
            assert!(failure.message.contains("--"), "{}", failure.message);
        }
    }
}
