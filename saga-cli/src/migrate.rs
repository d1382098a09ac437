//! `saga migrate`: the one command that changes the schema. It says what it will run, refuses
//! heavy migrations without `--yes`, then applies them the way the library does on connect.

use saga_store::MigrationInfo;
use serde_json::json;

use crate::output::Output;
use crate::store::{refuse_broken, Target};
use crate::{bad_input, Failure};

/// Lists the migrations not applied yet, then applies them.
pub(crate) async fn migrate(target: &Target, out: &Output, yes: bool) -> Result<u8, Failure> {
    let Some(before) = target.open().await?.schema else {
        out.line("this store keeps no schema; nothing to migrate");
        return Ok(0);
    };
    refuse_broken(&before)?;
    let from = before.version();
    let pending = before.pending();
    if pending.is_empty() {
        if out.is_json() {
            out.print_json(&json!({ "from": from, "to": from, "applied": [] }));
        } else {
            out.line(&format!(
                "the schema is at version {}, this saga's latest; nothing to apply",
                before.latest()
            ));
        }
        return Ok(0);
    }
    if !out.is_json() {
        out.line(&format!(
            "the schema is at version {}; {} migration{} to apply:",
            from.map_or_else(|| "none (no saga tables)".to_owned(), |v| v.to_string()),
            pending.len(),
            if pending.len() == 1 { "" } else { "s" }
        ));
        for info in &pending {
            out.line(&format!(
                "  {:>3}  {}{}",
                info.version,
                info.name,
                info.heavy.map_or(String::new(), |_| "  (heavy)".to_owned())
            ));
        }
    }
    // On a database without saga tables, a heavy migration has nothing to rebuild.
    if let (Some(_), Some(heavy), false) = (from, pending.iter().find(|i| i.heavy.is_some()), yes) {
        return Err(bad_input(format!(
            "migration {} ({}) is heavy: {}; apply it in a quiet moment, and pass --yes to go ahead",
            heavy.version,
            heavy.name,
            heavy.heavy.unwrap_or("it holds busy tables locked while it runs")
        )));
    }
    target.migrate().await?;
    let after = target.open().await?.schema;
    let to = after.as_ref().and_then(|state| state.version());
    if out.is_json() {
        let applied: Vec<_> = pending.iter().map(info_json).collect();
        out.print_json(&json!({ "from": from, "to": to, "applied": applied }));
    } else {
        out.line(&format!(
            "applied {} migration{}; the schema is at version {}",
            pending.len(),
            if pending.len() == 1 { "" } else { "s" },
            to.map_or_else(|| "none".to_owned(), |v| v.to_string())
        ));
    }
    Ok(0)
}

fn info_json(info: &MigrationInfo) -> serde_json::Value {
    json!({ "version": info.version, "name": info.name, "heavy": info.heavy.is_some() })
}
