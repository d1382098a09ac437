//! The command line: what each command takes, parsed by clap (which also suggests the nearest
//! command or flag for a typo).

use clap::{Parser, Subcommand};

/// Operate sagas: list them, read their history, settle the manual-intervention queue, decide
/// approvals, pause and resume saga types.
#[derive(Debug, Parser)]
#[command(name = "saga", version, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// Store URL: sqlite://path.db or postgres://user:password@host/database.
    #[arg(long, env = "SAGA_DATABASE_URL", global = true, hide_env_values = true)]
    pub(crate) db: Option<String>,
    /// Postgres schema holding the saga tables (default: saga).
    #[arg(long, env = "SAGA_SCHEMA", global = true)]
    pub(crate) schema: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The exit codes scripts can rely on, as `saga --help` lists them.
const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  anything else
  2  bad input: arguments, ids, durations, store URL, login, schema version, a malformed
     SAGA_APPROVERS, an unconfirmed large prune or heavy migration
  3  no such saga or item
  4  refused: already settled, not applicable now (a resume where nothing is paused), not
     authorized (SAGA_APPROVERS unset, or not naming who decides), an approval already
     decided, more approvals waiting than --max
  5  store unavailable (safe to retry)";

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List or cancel sagas.
    #[command(subcommand)]
    Sagas(SagasCommand),
    /// Show one saga with its steps.
    Show {
        /// The saga id.
        id: String,
    },
    /// Show one saga's full history.
    History {
        /// The saga id.
        id: String,
    },
    /// Work the manual-intervention queue.
    #[command(subcommand)]
    Interventions(InterventionsCommand),
    /// Decide the approval steps sagas wait at.
    ///
    /// Who may approve or reject which saga type is read from SAGA_APPROVERS, e.g.
    /// `promotion=alice,bob; *=root` (`*`: every type); without it every decision is refused
    /// (exit 4). --by (default: $SAGA_OPERATOR, else $USER) is checked against it and recorded
    /// in the history.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Pause a saga type, or one of its steps, in every process.
    ///
    /// No new attempt of it begins in any process (each reads the pauses at least once per poll
    /// interval); a step running now finishes. Sagas that reach a paused step wait, holding no
    /// worker, until `saga resume`; `saga show` says they are held. Pausing what is paused
    /// already changes nothing and says so (exit 0). --by (default: $SAGA_OPERATOR, else
    /// $USER) and --reason are recorded with the pause.
    Pause {
        /// The saga type.
        saga_type: String,
        /// Only this step of it (default: every step).
        #[arg(long)]
        step: Option<String>,
        /// Why (required; recorded with the pause and in each held saga's history).
        #[arg(long)]
        reason: String,
        /// Who is acting (default: $SAGA_OPERATOR, else $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Lift the pause on a saga type, or one of its steps.
    ///
    /// The sagas it held are due at once; the output says how many. Name the scope as it was
    /// paused (`saga pauses` lists them): resuming a type does not lift a pause on one of its
    /// steps. Nothing paused there is refused (exit 4). --by and --reason are recorded with the
    /// pause.
    Resume {
        /// The saga type.
        saga_type: String,
        /// The step, when the pause was on one step (as `saga pauses` lists it).
        #[arg(long)]
        step: Option<String>,
        /// Why (required; recorded with the pause).
        #[arg(long)]
        reason: String,
        /// Who is acting (default: $SAGA_OPERATOR, else $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// List the pauses in force: what, who paused it, when and why.
    Pauses {
        /// Also the lifted pauses, with who resumed them and why.
        #[arg(long)]
        all: bool,
    },
    /// Delete finished sagas (completed, compensated, cancelled) older than an age; never
    /// running sagas nor open interventions.
    Prune {
        /// Age of the last change, e.g. 30d, 12h, 15m, 90s.
        #[arg(long)]
        older_than: String,
        /// Delete at most this many.
        #[arg(long, default_value_t = 10_000)]
        limit: u32,
        /// Only count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Go ahead when more than 1,000 sagas would be deleted.
        #[arg(long)]
        yes: bool,
    },
    /// Serve the operator console (web dashboard and JSON API) until interrupted.
    ///
    /// Every request needs a token from SAGA_CONSOLE_TOKENS (`name:role:token` entries, role
    /// `viewer` or `operator`, comma-separated), unless --anonymous-loopback lets requests from
    /// this machine in without one. Approvals are decided per SAGA_APPROVERS, as in `saga
    /// approvals`.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Access tokens: `name:role:token,...` (role: viewer or operator).
        #[arg(long, env = "SAGA_CONSOLE_TOKENS", hide_env_values = true)]
        tokens: Option<String>,
        /// For development: serve requests without a token that come from the loopback
        /// interface, as this role (viewer or operator). Refused unless --listen is loopback.
        #[arg(long)]
        anonymous_loopback: Option<String>,
        /// Field names hidden in inputs and outputs, comma-separated (e.g. card_number,email).
        #[arg(long, env = "SAGA_CONSOLE_REDACT")]
        redact: Option<String>,
        /// Mark the session cookie Secure: set it when the console is reached over HTTPS.
        #[arg(long)]
        secure_cookies: bool,
        /// The origin browsers reach the console at (https://ops.example.com), when a proxy in
        /// front of it rewrites Host.
        #[arg(long)]
        public_origin: Option<String>,
    },
    /// Bring the store's schema to this version: lists the migrations not applied yet, then
    /// applies them. No other command migrates.
    Migrate {
        /// Go ahead with heavy migrations (they hold busy tables locked while they run).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SagasCommand {
    /// List sagas, oldest first.
    List {
        /// Only this status (running, compensating, completed, compensated, needs_intervention, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Only this saga type.
        #[arg(long = "type")]
        saga_type: Option<String>,
        /// Only the saga started with this idempotency key.
        #[arg(long)]
        key: Option<String>,
        /// Only sagas created more than this long ago, e.g. 1h.
        #[arg(long)]
        older_than: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this saga id (the last id of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Only sagas waiting for something (a timer, a signal, an approval), or held back
        /// before a step (a pause, a rate limit, a concurrency limit).
        #[arg(long)]
        waiting: bool,
        /// Only the child sagas of this saga (started by its steps).
        #[arg(long)]
        parent: Option<String>,
    },
    /// Cancel a running saga: no further step begins, completed steps are compensated.
    Cancel {
        /// The saga id.
        id: String,
        /// Why (required; recorded in the history).
        #[arg(long)]
        reason: String,
        /// Who is acting (default: $SAGA_OPERATOR, else $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum InterventionsCommand {
    /// List intervention items (open ones unless --all).
    List {
        /// Include settled items.
        #[arg(long)]
        all: bool,
    },
    /// Show one item: step, key, input, output, error.
    Show {
        /// The item id.
        id: String,
    },
    /// Run the failed compensation again with the same key and continue compensating (or
    /// re-drive a parked saga once its code is fixed; for a `past_pivot` item, run the step
    /// forward again with the same key).
    Retry {
        /// The item id (or --all).
        id: Option<String>,
        /// Retry every open item, at most --max of them.
        #[arg(long, conflicts_with = "id", requires = "max")]
        all: bool,
        /// The bound of --all.
        #[arg(long)]
        max: Option<usize>,
        /// Why (required; recorded in the history).
        #[arg(long)]
        reason: String,
        /// Who is acting (default: $SAGA_OPERATOR, else $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// The step was undone by hand: mark the compensation done and continue compensating. For
    /// an unknown outcome (the action may or may not have taken effect), with --not-applied:
    /// record that it did not, and compensate what completed before it. For a `past_pivot`
    /// item: the step was done by hand, and the saga goes on forward.
    Resolve {
        /// The item id.
        id: String,
        /// For an `unknown_outcome` item: you checked, and the action did not take effect.
        #[arg(long)]
        not_applied: bool,
        /// Why (required; recorded in the history).
        #[arg(long)]
        reason: String,
        /// Who is acting (default: $SAGA_OPERATOR, else $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Stop the saga where it is (cancelled) and close the item.
    Cancel {
        /// The item id.
        id: String,
        /// Why (required; recorded in the history).
        #[arg(long)]
        reason: String,
        /// Who is acting (default: $SAGA_OPERATOR, else $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// List the sagas waiting for an approval, oldest first: the step, and until when it waits.
    List {
        /// Only this saga type.
        #[arg(long = "type")]
        saga_type: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Approve the approval step a saga waits at: the step completes and the saga goes on.
    Approve {
        /// The saga id (or --all).
        id: Option<String>,
        /// Approve every saga waiting for an approval (of --type, if given), provided at most
        /// --max wait; with more, nothing is approved.
        #[arg(long, conflicts_with = "id", requires = "max")]
        all: bool,
        /// The bound of --all.
        #[arg(long, requires = "all")]
        max: Option<usize>,
        /// With --all: only sagas of this type.
        #[arg(long = "type", requires = "all")]
        saga_type: Option<String>,
        /// Why (required; recorded in the history).
        #[arg(long)]
        reason: String,
        /// Who is deciding (default: $SAGA_OPERATOR, else $USER); SAGA_APPROVERS must name them.
        #[arg(long)]
        by: Option<String>,
    },
    /// Reject the approval step a saga waits at: the step fails and the saga compensates.
    Reject {
        /// The saga id.
        id: String,
        /// Why (required; recorded in the history).
        #[arg(long)]
        reason: String,
        /// Who is deciding (default: $SAGA_OPERATOR, else $USER); SAGA_APPROVERS must name them.
        #[arg(long)]
        by: Option<String>,
    },
}
