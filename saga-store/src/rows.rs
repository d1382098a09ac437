//! Stored rows to saga-core records, for both SQL backends: a backend says how to read one
//! column of its own types (its [`Columns`] implementation, on its row type); what each column
//! means, and how an unreadable one is reported, is written here once.

use saga_core::{
    Attempt, Error, Event, FencingToken, IdempotencyKey, Intervention, InterventionId,
    NewIntervention, SagaId, SagaRecord, SagaType, SignalKey, SignalRecord, StepIndex, StepName,
    StepRecord, Timestamp, WorkerId,
};
use serde_json::Value;

/// One stored row, read column by column in the backend's own types. Each method gives the
/// column's value (`None` for NULL), or why it could not be read.
pub(crate) trait Columns {
    /// A saga id (the row's own saga, or the saga it belongs to).
    fn saga_id(&self, column: &str) -> Result<SagaId, String>;
    /// A saga id that may be NULL (a child's parent).
    fn opt_saga_id(&self, column: &str) -> Result<Option<SagaId>, String>;
    /// An intervention id.
    fn intervention_id(&self, column: &str) -> Result<InterventionId, String>;
    /// A text.
    fn text(&self, column: &str) -> Result<Option<String>, String>;
    /// A small whole number (an index, an attempt, a version).
    fn u32(&self, column: &str) -> Result<Option<u32>, String>;
    /// A large whole number (a fencing token, a sequence number).
    fn i64(&self, column: &str) -> Result<Option<i64>, String>;
    /// A time.
    fn time(&self, column: &str) -> Result<Option<Timestamp>, String>;
    /// A JSON document.
    fn json(&self, column: &str) -> Result<Option<Value>, String>;
}

/// Reads the columns of one row of one saga, turning every failure into
/// [`Error::CorruptRecord`] naming the column.
struct Reader<'r, C: ?Sized> {
    row: &'r C,
    saga: SagaId,
}

impl<'r, C: Columns + ?Sized> Reader<'r, C> {
    /// The reader of a row whose saga id is in `column`.
    fn of(row: &'r C, column: &str) -> Result<Self, Error> {
        let saga = row.saga_id(column).map_err(|reason| {
            Error::Store(format!("column `{column}` holds no saga id: {reason}").into())
        })?;
        Ok(Self { row, saga })
    }

    fn corrupt(&self, column: &str, reason: impl std::fmt::Display) -> Error {
        Error::CorruptRecord {
            saga: self.saga,
            reason: format!("column `{column}`: {reason}"),
        }
    }

    fn read<T>(&self, column: &str, value: Result<Option<T>, String>) -> Result<Option<T>, Error> {
        value.map_err(|reason| self.corrupt(column, reason))
    }

    fn required<T>(&self, column: &str, value: Result<Option<T>, String>) -> Result<T, Error> {
        self.read(column, value)?
            .ok_or_else(|| self.corrupt(column, "is NULL"))
    }

    fn text(&self, column: &str) -> Result<String, Error> {
        self.required(column, self.row.text(column))
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>, Error> {
        self.read(column, self.row.text(column))
    }

    fn u32(&self, column: &str) -> Result<u32, Error> {
        self.required(column, self.row.u32(column))
    }

    fn opt_u32(&self, column: &str) -> Result<Option<u32>, Error> {
        self.read(column, self.row.u32(column))
    }

    fn i64(&self, column: &str) -> Result<i64, Error> {
        self.required(column, self.row.i64(column))
    }

    fn time(&self, column: &str) -> Result<Timestamp, Error> {
        self.required(column, self.row.time(column))
    }

    fn opt_time(&self, column: &str) -> Result<Option<Timestamp>, Error> {
        self.read(column, self.row.time(column))
    }

    fn json(&self, column: &str) -> Result<Value, Error> {
        self.required(column, self.row.json(column))
    }

    fn opt_json(&self, column: &str) -> Result<Option<Value>, Error> {
        self.read(column, self.row.json(column))
    }

    /// A text column holding a persisted enum (or anything else `FromStr` reads).
    fn parsed<T>(&self, column: &str) -> Result<T, Error>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let text = self.text(column)?;
        text.parse().map_err(|err| self.corrupt(column, err))
    }

    fn opt_parsed<T>(&self, column: &str) -> Result<Option<T>, Error>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.opt_text(column)?
            .map(|text| text.parse().map_err(|err| self.corrupt(column, err)))
            .transpose()
    }
}

/// A saga row.
pub(crate) fn saga_record(row: &(impl Columns + ?Sized)) -> Result<SagaRecord, Error> {
    let r = Reader::of(row, "id")?;
    Ok(SagaRecord {
        id: r.saga,
        saga_type: SagaType::new(r.text("saga_type")?),
        version: r.u32("version")?,
        fingerprint: r.text("fingerprint")?,
        status: r.parsed("status")?,
        status_reason: r.opt_text("status_reason")?,
        input: r.json("input")?,
        input_hash: r.text("input_hash")?,
        idempotency_key: r.opt_text("idempotency_key")?.map(IdempotencyKey::new),
        next_run_at: r.opt_time("next_run_at")?,
        lease_owner: r.opt_text("lease_owner")?.map(WorkerId::new),
        lease_expires_at: r.opt_time("lease_expires_at")?,
        fencing_token: FencingToken(r.i64("fencing_token")?),
        trace_context: r.opt_text("trace_context")?,
        cancel_requested: r.opt_text("cancel_requested")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        waiting_for: r.opt_text("waiting_for")?,
        deadline: r.opt_time("deadline_at")?,
        signals_received: u64::try_from(r.i64("signals_received")?).unwrap_or(0),
        parent: match (
            r.read("parent_id", row.opt_saga_id("parent_id"))?,
            r.opt_text("parent_step")?,
        ) {
            (Some(saga), Some(step)) => Some(Box::new(saga_core::ParentLink {
                saga,
                step: StepName::new(step),
            })),
            _ => None,
        },
    })
}

/// A signal row of `saga`.
pub(crate) fn signal_record(
    row: &(impl Columns + ?Sized),
    saga: SagaId,
) -> Result<SignalRecord, Error> {
    let r = Reader { row, saga };
    Ok(SignalRecord {
        name: r.text("name")?,
        key: SignalKey::new(r.text("signal_key")?),
        payload: r.json("payload")?,
        received_at: r.time("received_at")?,
    })
}

/// A step row of `saga`.
pub(crate) fn step_record(
    row: &(impl Columns + ?Sized),
    saga: SagaId,
) -> Result<StepRecord, Error> {
    let r = Reader { row, saga };
    Ok(StepRecord {
        index: StepIndex(r.u32("step_index")?),
        phase: r.parsed("phase")?,
        name: StepName::new(r.text("name")?),
        status: r.parsed("status")?,
        attempt: Attempt(r.u32("attempt")?),
        idempotency_key: IdempotencyKey::new(r.text("idempotency_key")?),
        output: r.opt_json("output")?,
        last_error: r.opt_text("last_error")?,
        next_attempt_at: r.opt_time("next_attempt_at")?,
        started_at: r.opt_time("started_at")?,
        finished_at: r.opt_time("finished_at")?,
    })
}

/// An event row.
pub(crate) fn event(row: &(impl Columns + ?Sized)) -> Result<Event, Error> {
    let r = Reader::of(row, "saga_id")?;
    Ok(Event {
        seq: r.i64("seq")?,
        saga_id: r.saga,
        at: r.time("at")?,
        kind: r.parsed("kind")?,
        step: r.opt_text("step")?.map(StepName::new),
        phase: r.opt_parsed("phase")?,
        attempt: r.opt_u32("attempt")?.map(Attempt),
        detail: r.opt_text("detail")?,
    })
}

/// An intervention row.
pub(crate) fn intervention(row: &(impl Columns + ?Sized)) -> Result<Intervention, Error> {
    let r = Reader::of(row, "saga_id")?;
    let step = match (r.opt_u32("step_index")?, r.opt_text("step_name")?) {
        (Some(index), Some(name)) => Some((StepIndex(index), StepName::new(name))),
        _ => None,
    };
    Ok(Intervention {
        saga_id: r.saga,
        item: NewIntervention {
            id: r
                .row
                .intervention_id("id")
                .map_err(|reason| r.corrupt("id", reason))?,
            kind: r.parsed("kind")?,
            step,
            phase: r.opt_parsed("phase")?,
            idempotency_key: r.opt_text("idempotency_key")?.map(IdempotencyKey::new),
            input: r.opt_json("input")?,
            output: r.opt_json("output")?,
            error: r.text("error")?,
            parked_from: r.opt_parsed("parked_from")?,
        },
        status: r.parsed("status")?,
        opened_at: r.time("opened_at")?,
        resolved_at: r.opt_time("resolved_at")?,
        resolved_by: r.opt_text("resolved_by")?,
        resolution: r.opt_text("resolution")?,
        resolution_reason: r.opt_text("resolution_reason")?,
    })
}

/// A pause row (`saga_pauses`).
pub(crate) fn pause(row: &(impl Columns + ?Sized)) -> Result<saga_core::Pause, Error> {
    let bad = |column: &str, reason: String| {
        Error::Store(format!("saga_pauses column `{column}`: {reason}").into())
    };
    let text = |column: &str| {
        row.text(column)
            .map_err(|reason| bad(column, reason))?
            .ok_or_else(|| bad(column, "is NULL".into()))
    };
    let opt_text = |column: &str| row.text(column).map_err(|reason| bad(column, reason));
    let step = text("step")?;
    Ok(saga_core::Pause {
        id: row
            .i64("id")
            .map_err(|reason| bad("id", reason))?
            .ok_or_else(|| bad("id", "is NULL".into()))?,
        scope: saga_core::PauseScope {
            saga_type: SagaType::new(text("saga_type")?),
            step: (!step.is_empty()).then(|| StepName::new(step)),
        },
        paused_by: text("paused_by")?,
        reason: text("reason")?,
        paused_at: row
            .time("paused_at")
            .map_err(|reason| bad("paused_at", reason))?
            .ok_or_else(|| bad("paused_at", "is NULL".into()))?,
        resumed_at: row
            .time("resumed_at")
            .map_err(|reason| bad("resumed_at", reason))?,
        resumed_by: opt_text("resumed_by")?,
        resume_reason: opt_text("resume_reason")?,
    })
}

/// A column of an aggregate row, or a store error naming it.
fn aggregate<T>(column: &str, value: Result<Option<T>, String>) -> Result<T, Error> {
    value
        .map_err(|reason| Error::Store(format!("overview column `{column}`: {reason}").into()))?
        .ok_or_else(|| Error::Store(format!("overview column `{column}` is NULL").into()))
}

fn count(row: &(impl Columns + ?Sized)) -> Result<u64, Error> {
    Ok(u64::try_from(aggregate("n", row.i64("n"))?).unwrap_or(0))
}

/// An overview row of (`saga_type`, `status`, `n`).
pub(crate) fn type_count(
    row: &(impl Columns + ?Sized),
) -> Result<(SagaType, saga_core::SagaStatus, u64), Error> {
    let status = aggregate("status", row.text("status"))?;
    let status = status
        .parse()
        .map_err(|err| Error::Store(format!("overview column `status`: {err}").into()))?;
    Ok((
        SagaType::new(aggregate("saga_type", row.text("saga_type"))?),
        status,
        count(row)?,
    ))
}

/// An overview row of (`kind`, `bucket`, `n`); `kind` is `started`, `completed`,
/// `compensated` or `escalated`.
pub(crate) fn series_count(
    row: &(impl Columns + ?Sized),
) -> Result<(saga_core::store::overview::SeriesKind, usize, u64), Error> {
    use saga_core::store::overview::SeriesKind;
    let kind = match aggregate("kind", row.text("kind"))?.as_str() {
        "started" => SeriesKind::Started,
        "completed" => SeriesKind::Completed,
        "compensated" => SeriesKind::Compensated,
        "escalated" => SeriesKind::Escalated,
        other => {
            return Err(Error::Store(
                format!("overview column `kind` holds `{other}`").into(),
            ))
        }
    };
    let bucket = usize::try_from(aggregate("bucket", row.i64("bucket"))?)
        .map_err(|err| Error::Store(format!("overview column `bucket`: {err}").into()))?;
    Ok((kind, bucket, count(row)?))
}

/// An overview row of (`saga_type`, `name`, `phase`, `n`, `since`).
pub(crate) fn stuck_step(
    row: &(impl Columns + ?Sized),
) -> Result<saga_core::store::overview::StuckStep, Error> {
    let phase = aggregate("phase", row.text("phase"))?;
    Ok(saga_core::store::overview::StuckStep {
        saga_type: SagaType::new(aggregate("saga_type", row.text("saga_type"))?),
        step: StepName::new(aggregate("name", row.text("name"))?),
        phase: phase
            .parse()
            .map_err(|err| Error::Store(format!("overview column `phase`: {err}").into()))?,
        sagas: count(row)?,
        since: aggregate("since", row.time("since"))?,
    })
}

/// The intervention queue's row of (`n`, `oldest`).
pub(crate) fn queue(row: &(impl Columns + ?Sized)) -> Result<(u64, Option<Timestamp>), Error> {
    let oldest = row
        .time("oldest")
        .map_err(|reason| Error::Store(format!("overview column `oldest`: {reason}").into()))?;
    Ok((count(row)?, oldest))
}
