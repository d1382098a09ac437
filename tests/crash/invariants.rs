//! The invariants checked after every scenario, against the saga tables and the ledger, and
//! the summary figures printed with them.

use std::fmt;

use sqlx::{PgPool, Row};

/// Compensable steps of the types the suite runs: (saga type, step).
const COMPENSABLE: &str =
    "(VALUES ('crash_five', 's1'), ('crash_five', 's2'), ('crash_five', 's3'),
    ('crash_five', 's4'), ('crash_grouped', 's1'), ('crash_grouped', 's2'),
    ('crash_grouped', 's3'), ('crash_grouped', 's4'), ('big_output', 's1'), ('panicky', 's1'), ('hangs', 's1'),
    ('crash_policy', 'reserve'), ('crash_policy', 'issue_code'), ('crash_policy', 'partner'),
    ('crash_parent', 's1'), ('crash_parent', 's2'), ('crash_parent', 's3'),
    ('crash_parent', 'ship'), ('crash_child', 's1'), ('crash_child', 's2'))
    AS compensable(saga_type, step)";

/// Steps that start a child saga: (saga type, step). They complete with no effect of their own
/// in the ledger: their child's end decides them (see the checks of children).
const CHILD_STEPS: &str = "(VALUES ('crash_parent', 'ship')) AS child_steps(saga_type, step)";

/// Steps under a frequency cap: (saga type, step, cap, max per entity and window, the input
/// field the cap counts under). Every window is longer than a run, so every effect counts.
const CAPPED: &str = "(VALUES ('crash_policy', 'notify', 'notice', 1, 'customer'),
    ('crash_policy', 'issue_code', 'code', 1, 'customer'))
    AS capped(saga_type, step, cap, max, entity)";

/// Steps of a parallel group: (saga type, step, the group's rank). A group's steps run at
/// once, so their effects may come in any order among themselves; the group as a whole keeps
/// its place (the index of its first step) among the other steps.
const GROUPED: &str = "(VALUES ('crash_grouped', 's2', 1), ('crash_grouped', 's3', 1),
    ('crash_grouped', 's4', 1), ('crash_parent', 's2', 1), ('crash_parent', 's3', 1))
    AS grouped(saga_type, step, rank)";

/// Steps that wait (for a signal): they complete with no effect of their own in the ledger.
/// (saga type, step, signal).
const WAITING: &str =
    "(VALUES ('crash_signal', 'paid', 'paid')) AS waiting(saga_type, step, signal)";

/// Each invariant: a name and a query selecting the saga (as text) of each violation.
const CHECKS: &[(&str, &str)] = &[
    (
        "every saga is settled",
        "SELECT id::text FROM saga.saga_instances WHERE status IN ('running', 'compensating')",
    ),
    (
        "a saga needing intervention has exactly one open item; other sagas have none",
        "SELECT id::text FROM (
             SELECT s.id, s.status, COUNT(i.id) FILTER (WHERE i.status = 'open') AS open
               FROM saga.saga_instances s LEFT JOIN saga.saga_interventions i ON i.saga_id = s.id
              GROUP BY s.id, s.status) per_saga
          WHERE (status = 'needs_intervention') <> (open = 1) OR open > 1",
    ),
    (
        "the ledger applied each step phase's effect exactly once (one key per step phase)",
        "SELECT saga_id FROM public.ledger_effects
          GROUP BY saga_id, step_index, phase HAVING COUNT(*) > 1",
    ),
    (
        "one downstream call per (key, attempt): no attempt ran twice",
        "SELECT saga_id FROM public.ledger_calls GROUP BY saga_id, key, attempt HAVING COUNT(*) > 1",
    ),
    (
        "every effect carries the stable key of its (saga, step, phase)",
        "SELECT saga_id FROM public.ledger_effects
          WHERE key <> saga_id || ':' || step || ':' || phase",
    ),
    (
        "no step phase started again after it completed (saga_events)",
        "SELECT started.saga_id::text FROM saga.saga_events started
           JOIN saga.saga_events done
             ON done.saga_id = started.saga_id AND done.step = started.step
            AND done.phase = started.phase
          WHERE done.kind = 'step_completed' AND started.kind = 'step_started'
            AND started.seq > done.seq",
    ),
    (
        "no call was made with an attempt after the one that completed (ledger_calls)",
        "SELECT c.saga_id FROM public.ledger_calls c
           JOIN saga.saga_steps st ON st.idempotency_key = c.key
          WHERE st.status = 'completed' AND c.attempt > st.attempt",
    ),
    (
        "every completed step phase has its effect in the ledger (a waiting step, its signal; a \
         child step, its child's end)",
        "SELECT st.saga_id::text FROM saga.saga_steps st
           JOIN saga.saga_instances s ON s.id = st.saga_id
          WHERE st.status = 'completed'
            AND NOT EXISTS (SELECT 1 FROM public.ledger_effects e WHERE e.key = st.idempotency_key)
            AND NOT EXISTS (SELECT 1 FROM CHILD_STEPS
                             WHERE child_steps.saga_type = s.saga_type
                               AND child_steps.step = st.name)
            AND NOT EXISTS (SELECT 1 FROM WAITING
                              JOIN saga.saga_signals g ON g.name = waiting.signal
                             WHERE waiting.saga_type = s.saga_type AND waiting.step = st.name
                               AND st.phase = 'action' AND g.saga_id = st.saga_id)",
    ),
    (
        "a waiting step that completed holds the payload of its signal, which came once",
        "SELECT st.saga_id::text FROM saga.saga_steps st
           JOIN saga.saga_instances s ON s.id = st.saga_id
           JOIN WAITING ON waiting.saga_type = s.saga_type AND waiting.step = st.name
          WHERE st.phase = 'action' AND st.status = 'completed'
            AND st.output IS DISTINCT FROM (SELECT g.payload FROM saga.saga_signals g
                                             WHERE g.saga_id = st.saga_id
                                               AND g.name = waiting.signal)",
    ),
    (
        "each signal stored is counted on its saga and recorded once in its history; each \
         end of a child counts on its parent too (at least once: a completed child sent back \
         to compensate ends twice)",
        "SELECT s.id::text FROM saga.saga_instances s
          WHERE (NOT EXISTS (SELECT 1 FROM saga.saga_instances c WHERE c.parent_id = s.id)
                 AND s.signals_received <> (SELECT COUNT(*) FROM saga.saga_signals g
                                             WHERE g.saga_id = s.id))
             OR s.signals_received < (SELECT COUNT(*) FROM saga.saga_signals g WHERE g.saga_id = s.id)
                                   + (SELECT COUNT(*) FROM saga.saga_instances c
                                       WHERE c.parent_id = s.id
                                         AND c.status IN ('completed', 'compensated', 'cancelled'))
             OR (SELECT COUNT(*) FROM saga.saga_signals g WHERE g.saga_id = s.id)
                <> (SELECT COUNT(*) FROM saga.saga_events e
                     WHERE e.saga_id = s.id AND e.kind = 'signal_received')",
    ),
    (
        "no settled saga still records a wait",
        "SELECT id::text FROM saga.saga_instances
          WHERE waiting_for IS NOT NULL AND status NOT IN ('running', 'compensating')",
    ),
    (
        "every effect in the ledger belongs to a completed step phase or to the open item that \
         escalated it (unknown_outcome for an action, compensation_failed for a compensation): \
         none leaked, no exception",
        "SELECT e.saga_id FROM public.ledger_effects e
          WHERE NOT EXISTS (SELECT 1 FROM saga.saga_steps st
                             WHERE st.idempotency_key = e.key AND st.status = 'completed')
            AND NOT EXISTS (SELECT 1 FROM saga.saga_interventions i
                             WHERE i.saga_id::text = e.saga_id AND i.status = 'open'
                               AND i.idempotency_key = e.key
                               AND i.kind = CASE e.phase WHEN 'action' THEN 'unknown_outcome'
                                                         ELSE 'compensation_failed' END)",
    ),
    (
        "no step phase whose last attempt is unknown is recorded failed",
        "SELECT st.saga_id::text FROM saga.saga_steps st
          WHERE st.status = 'failed' AND st.last_error LIKE 'unknown:%'",
    ),
    (
        "a cancel never starts a step that had not begun: no first attempt of an action after \
         the cancel request",
        "SELECT started.saga_id::text FROM saga.saga_events started
           JOIN saga.saga_events cancel
             ON cancel.saga_id = started.saga_id AND cancel.kind = 'operator_action'
            AND cancel.detail LIKE 'cancel requested%'
          WHERE started.kind = 'step_started' AND started.phase = 'action'
            AND started.attempt = 1 AND started.seq > cancel.seq",
    ),
    (
        "a completed or compensated saga left no step phase begun (only an operator's cancel \
         stops a saga where it is)",
        "SELECT st.saga_id::text FROM saga.saga_steps st
           JOIN saga.saga_instances s ON s.id = st.saga_id
          WHERE s.status IN ('completed', 'compensated')
            AND st.status = 'in_progress'",
    ),
    (
        "compensations ran only for steps whose action completed",
        "SELECT e.saga_id FROM public.ledger_effects e
          WHERE e.phase = 'compensation'
            AND NOT EXISTS (SELECT 1 FROM saga.saga_steps a
                             WHERE a.saga_id::text = e.saga_id AND a.name = e.step
                               AND a.phase = 'action' AND a.status = 'completed')",
    ),
    (
        "each refund names the receipt of the action it undoes",
        "SELECT c.saga_id FROM public.ledger_effects c
           JOIN public.ledger_effects a
             ON a.saga_id = c.saga_id AND a.step = c.step AND a.phase = 'action'
          WHERE c.phase = 'compensation' AND c.refund_of IS DISTINCT FROM a.receipt",
    ),
    (
        "actions took effect in step order (a parallel group's steps in any order among \
         themselves, the group in its place)",
        "SELECT saga_id FROM (
             SELECT e.saga_id, COALESCE(grouped.rank, e.step_index - 1) AS rank,
                    grouped.rank IS NOT NULL AS in_group,
                    LAG(COALESCE(grouped.rank, e.step_index - 1))
                        OVER (PARTITION BY e.saga_id ORDER BY e.seq) AS before
               FROM public.ledger_effects e
               JOIN saga.saga_instances s ON s.id::text = e.saga_id
               LEFT JOIN GROUPED ON grouped.saga_type = s.saga_type AND grouped.step = e.step
              WHERE e.phase = 'action') ordered
          WHERE rank < before OR (rank = before AND NOT in_group)",
    ),
    (
        "compensations took effect in reverse step order (a parallel group's steps in any \
         order among themselves, the group in its place)",
        "SELECT saga_id FROM (
             SELECT e.saga_id, COALESCE(grouped.rank, e.step_index - 1) AS rank,
                    grouped.rank IS NOT NULL AS in_group,
                    LAG(COALESCE(grouped.rank, e.step_index - 1))
                        OVER (PARTITION BY e.saga_id ORDER BY e.seq) AS before
               FROM public.ledger_effects e
               JOIN saga.saga_instances s ON s.id::text = e.saga_id
               LEFT JOIN GROUPED ON grouped.saga_type = s.saga_type AND grouped.step = e.step
              WHERE e.phase = 'compensation') ordered
          WHERE rank > before OR (rank = before AND NOT in_group)",
    ),
    (
        "a parallel group's steps began only after the steps before it completed, and the \
         steps after it only once the whole group completed (saga_events)",
        "SELECT started.saga_id::text FROM saga.saga_events started
           JOIN saga.saga_instances s ON s.id = started.saga_id
           JOIN saga.saga_steps st ON st.saga_id = started.saga_id AND st.name = started.step
                                  AND st.phase = 'action'
           JOIN saga.saga_steps other ON other.saga_id = started.saga_id AND other.phase = 'action'
                                     AND other.step_index < st.step_index
          WHERE started.kind = 'step_started' AND started.phase = 'action'
            AND NOT EXISTS (SELECT 1 FROM GROUPED
                             WHERE grouped.saga_type = s.saga_type
                               AND grouped.step IN (st.name, other.name)
                             GROUP BY grouped.rank HAVING COUNT(*) = 2)
            AND NOT EXISTS (SELECT 1 FROM saga.saga_events done
                             WHERE done.saga_id = started.saga_id AND done.step = other.name
                               AND done.phase = 'action' AND done.kind IN ('step_completed', 'step_skipped')
                               AND done.seq < started.seq)",
    ),
    (
        "compensations took effect after every action of their saga",
        "SELECT c.saga_id FROM public.ledger_effects c
           JOIN public.ledger_effects a ON a.saga_id = c.saga_id AND a.phase = 'action'
          WHERE c.phase = 'compensation' AND c.seq < a.seq",
    ),
    (
        "a compensated saga compensated every completed compensable step",
        "SELECT s.id::text FROM saga.saga_instances s
           JOIN saga.saga_steps a ON a.saga_id = s.id AND a.phase = 'action' AND a.status = 'completed'
           JOIN COMPENSABLE ON compensable.saga_type = s.saga_type AND compensable.step = a.name
          WHERE s.status = 'compensated'
            AND NOT EXISTS (SELECT 1 FROM saga.saga_steps c
                             WHERE c.saga_id = s.id AND c.step_index = a.step_index
                               AND c.phase = 'compensation' AND c.status = 'completed')",
    ),
    (
        "a completed saga completed every action (or skipped it under a reached cap: see the \
         checks of skipped steps) and compensated nothing",
        "SELECT s.id::text FROM saga.saga_instances s
          WHERE s.status = 'completed'
            AND EXISTS (SELECT 1 FROM saga.saga_steps st
                         WHERE st.saga_id = s.id
                           AND (st.phase = 'compensation'
                                OR st.status NOT IN ('completed', 'skipped')))",
    ),
    (
        "each crash_five saga ended as its plan says (completed / compensated / needs_intervention), \
         unless an operator cancelled it or it waits for a person with an unknown_outcome item",
        "SELECT id::text FROM saga.saga_instances
          WHERE saga_type = 'crash_five' AND jsonb_typeof(input) = 'object' AND input ? 'fail_at'
            AND NOT EXISTS (SELECT 1 FROM saga.saga_interventions i
                             WHERE i.saga_id = saga_instances.id AND i.kind = 'unknown_outcome')
            AND NOT EXISTS (SELECT 1 FROM saga.saga_events e
                             WHERE e.saga_id = saga_instances.id AND e.kind = 'operator_action'
                               AND e.detail LIKE 'cancel requested%')
            AND status <> CASE WHEN input->'fail_at' = 'null'::jsonb THEN 'completed'
                               WHEN input->'comp_fail_at' = 'null'::jsonb THEN 'compensated'
                               ELSE 'needs_intervention' END",
    ),
    (
        "each crash_grouped saga ended as its plan says: completed if nothing is declined; \
         otherwise compensated, or waiting for a person when a compensation is planned to fail \
         (when both the declined step and the failing compensation are in the group, either: \
         a grouped step that had not completed when its group stopped is not undone, so its \
         failing compensation may never run), unless an unknown_outcome item waits",
        "SELECT id::text FROM saga.saga_instances
          WHERE saga_type = 'crash_grouped'
            AND NOT EXISTS (SELECT 1 FROM saga.saga_interventions i
                             WHERE i.saga_id = saga_instances.id AND i.kind = 'unknown_outcome')
            AND CASE WHEN input->'fail_at' = 'null'::jsonb THEN status <> 'completed'
                     WHEN input->'comp_fail_at' = 'null'::jsonb THEN status <> 'compensated'
                     WHEN (input->>'comp_fail_at')::int = 1 OR (input->>'fail_at')::int = 5
                          THEN status <> 'needs_intervention'
                     ELSE status NOT IN ('compensated', 'needs_intervention') END",
    ),
    (
        "each child saga was started by its parent's step, with a key derived from that \
         step's, and that step started no other",
        "SELECT c.id::text FROM saga.saga_instances c
          WHERE c.parent_id IS NOT NULL
            AND (c.idempotency_key IS DISTINCT FROM
                     'child:' || c.parent_id::text || ':' || c.parent_step || ':action'
                 OR NOT EXISTS (SELECT 1 FROM saga.saga_steps st
                                 WHERE st.saga_id = c.parent_id AND st.name = c.parent_step
                                   AND st.phase = 'action')
                 OR NOT EXISTS (SELECT 1 FROM saga.saga_events e
                                 WHERE e.saga_id = c.parent_id AND e.kind = 'child_started'
                                   AND e.step = c.parent_step
                                   AND e.detail LIKE '%saga ' || c.id::text)
                 OR EXISTS (SELECT 1 FROM saga.saga_events e
                             WHERE e.saga_id = c.parent_id AND e.kind = 'child_started'
                               AND e.step = c.parent_step
                               AND e.detail NOT LIKE '%saga ' || c.id::text)
                 OR EXISTS (SELECT 1 FROM saga.saga_instances twin
                             WHERE twin.parent_id = c.parent_id
                               AND twin.parent_step = c.parent_step AND twin.id <> c.id))",
    ),
    (
        "every child step that began has its child (none forgotten)",
        "SELECT st.saga_id::text FROM saga.saga_steps st
           JOIN saga.saga_instances s ON s.id = st.saga_id
           JOIN CHILD_STEPS ON child_steps.saga_type = s.saga_type AND child_steps.step = st.name
          WHERE st.phase = 'action'
            AND NOT EXISTS (SELECT 1 FROM saga.saga_instances c
                             WHERE c.parent_id = st.saga_id AND c.parent_step = st.name)",
    ),
    (
        "a child step's outcome is its child's end: completed with the child's output while the \
         child stays completed; undone once the child compensated; failed only when the child \
         compensated on its own (a child a person cancelled is no clean failure)",
        "SELECT c.id::text FROM saga.saga_instances c
           JOIN saga.saga_steps a ON a.saga_id = c.parent_id AND a.name = c.parent_step
                                 AND a.phase = 'action'
           LEFT JOIN saga.saga_steps u ON u.saga_id = c.parent_id AND u.name = c.parent_step
                                      AND u.phase = 'compensation'
          WHERE c.parent_id IS NOT NULL
            AND NOT ((a.status = 'completed' AND u.status IS NULL AND c.status = 'completed'
                      AND a.output->>'saga' = c.id::text)
                  OR (a.status = 'completed' AND u.status = 'completed'
                      AND c.status = 'compensated')
                  OR (a.status = 'failed' AND u.status IS NULL AND c.status = 'compensated'))",
    ),
    (
        "a child ends as its parent: completed with a completed parent, compensated with a \
         compensated one",
        "SELECT c.id::text FROM saga.saga_instances c
           JOIN saga.saga_instances p ON p.id = c.parent_id
          WHERE (p.status = 'completed' AND c.status <> 'completed')
             OR (p.status = 'compensated' AND c.status <> 'compensated')",
    ),
    (
        "a child's actions took effect after its parent's steps before the child step and \
         before those after it; its compensations before the parent undid the steps before it \
         (ledger)",
        "SELECT ce.saga_id FROM public.ledger_effects ce
           JOIN saga.saga_instances c ON c.id::text = ce.saga_id AND c.parent_id IS NOT NULL
           JOIN saga.saga_steps ps ON ps.saga_id = c.parent_id AND ps.name = c.parent_step
                                  AND ps.phase = 'action'
           JOIN public.ledger_effects pe ON pe.saga_id = c.parent_id::text
          WHERE (ce.phase = 'action' AND pe.phase = 'action'
                 AND pe.step_index <= ps.step_index AND pe.seq > ce.seq)
             OR (ce.phase = 'action' AND pe.phase = 'action'
                 AND pe.step_index > ps.step_index + 1 AND pe.seq < ce.seq)
             OR (ce.phase = 'compensation' AND pe.phase = 'compensation'
                 AND pe.step_index <= ps.step_index AND pe.seq < ce.seq)",
    ),
    (
        "each crash_parent saga ended as its plan says: compensated when a step is declined \
         (its own, or the child's), else completed; a cancelled one compensated (or completed, \
         when the cancel came after its last step began), unless an unknown_outcome item waits",
        "SELECT id::text FROM saga.saga_instances
          WHERE saga_type = 'crash_parent'
            AND NOT EXISTS (SELECT 1 FROM saga.saga_interventions i
                             WHERE i.saga_id = saga_instances.id AND i.kind = 'unknown_outcome')
            AND CASE WHEN EXISTS (SELECT 1 FROM saga.saga_events e
                                   WHERE e.saga_id = saga_instances.id
                                     AND e.kind = 'operator_action'
                                     AND e.detail LIKE 'cancel requested%')
                          THEN status NOT IN ('compensated', 'completed')
                     WHEN input->'fail_at' <> 'null'::jsonb THEN status <> 'compensated'
                     ELSE status <> 'completed' END",
    ),
    (
        "each crash_policy saga ended as its plan says: compensated if declined, else completed \
         (no exception)",
        "SELECT id::text FROM saga.saga_instances
          WHERE saga_type = 'crash_policy'
            AND status IS DISTINCT FROM CASE WHEN (input->>'decline')::boolean THEN 'compensated'
                                             ELSE 'completed' END",
    ),
    (
        "no compensation took effect without its action's effect (ledger)",
        "SELECT c.saga_id FROM public.ledger_effects c
          WHERE c.phase = 'compensation'
            AND NOT EXISTS (SELECT 1 FROM public.ledger_effects a
                             WHERE a.saga_id = c.saga_id AND a.step = c.step
                               AND a.phase = 'action')",
    ),
    (
        "every effect of a capped step names the entity its cap counts under",
        "SELECT e.saga_id FROM public.ledger_effects e
           JOIN saga.saga_instances s ON s.id::text = e.saga_id
           JOIN CAPPED ON capped.saga_type = s.saga_type AND capped.step = e.step
          WHERE e.entity IS DISTINCT FROM s.input->>capped.entity",
    ),
    (
        "no entity got more effects of a capped step than its cap allows, counting every saga, \
         process and restart",
        "SELECT (ARRAY_AGG(e.saga_id ORDER BY e.seq DESC))[1] FROM public.ledger_effects e
           JOIN saga.saga_instances s ON s.id::text = e.saga_id
           JOIN CAPPED ON capped.saga_type = s.saga_type AND capped.step = e.step
          WHERE e.phase = 'action'
          GROUP BY capped.cap, capped.max, e.entity
         HAVING COUNT(*) > capped.max",
    ),
    (
        "only a capped step is skipped: its action, with its cap's reason, recorded once in its \
         history",
        "SELECT st.saga_id::text FROM saga.saga_steps st
           JOIN saga.saga_instances s ON s.id = st.saga_id
          WHERE st.status = 'skipped'
            AND (st.phase <> 'action'
                 OR NOT EXISTS (SELECT 1 FROM CAPPED
                                 WHERE capped.saga_type = s.saga_type AND capped.step = st.name
                                   AND st.last_error LIKE 'cap `' || capped.cap || '`:%reached%')
                 OR (SELECT COUNT(*) FROM saga.saga_events e
                      WHERE e.saga_id = st.saga_id AND e.kind = 'step_skipped'
                        AND e.step = st.name) <> 1)",
    ),
    (
        "a skipped step never began and called nothing: no attempt started, no call and no \
         effect under its key",
        "SELECT st.saga_id::text FROM saga.saga_steps st
          WHERE st.status = 'skipped'
            AND (EXISTS (SELECT 1 FROM saga.saga_events e
                          WHERE e.saga_id = st.saga_id AND e.step = st.name
                            AND e.phase = 'action' AND e.kind = 'step_started')
                 OR EXISTS (SELECT 1 FROM public.ledger_calls c
                             WHERE c.saga_id = st.saga_id::text
                               AND c.key = st.saga_id::text || ':' || st.name || ':action')
                 OR EXISTS (SELECT 1 FROM public.ledger_effects e
                             WHERE e.saga_id = st.saga_id::text AND e.step = st.name
                               AND e.phase = 'action'))",
    ),
    (
        "a skipped step is never compensated: no compensation recorded, started, called or \
         taken effect",
        "SELECT a.saga_id::text FROM saga.saga_steps a
          WHERE a.phase = 'action' AND a.status = 'skipped'
            AND (EXISTS (SELECT 1 FROM saga.saga_steps c
                          WHERE c.saga_id = a.saga_id AND c.step_index = a.step_index
                            AND c.phase = 'compensation')
                 OR EXISTS (SELECT 1 FROM saga.saga_events e
                             WHERE e.saga_id = a.saga_id AND e.step = a.name
                               AND e.phase = 'compensation')
                 OR EXISTS (SELECT 1 FROM public.ledger_calls c
                             WHERE c.saga_id = a.saga_id::text
                               AND c.key = a.saga_id::text || ':' || a.name || ':compensation')
                 OR EXISTS (SELECT 1 FROM public.ledger_effects e
                             WHERE e.saga_id = a.saga_id::text AND e.step = a.name
                               AND e.phase = 'compensation'))",
    ),
];

/// Figures of one scenario run.
#[derive(Debug, Default, Clone)]
pub(crate) struct Summary {
    pub(crate) sagas: i64,
    pub(crate) by_status: Vec<(String, i64)>,
    pub(crate) kills: u64,
    pub(crate) takeovers: i64,
    pub(crate) retries: i64,
    pub(crate) repeats_absorbed: i64,
    pub(crate) duplicates: i64,
    pub(crate) open_items: i64,
    pub(crate) unknown_outcomes: i64,
    pub(crate) skipped: i64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let statuses = self
            .by_status
            .iter()
            .map(|(status, n)| format!("{status} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        write!(
            f,
            "sagas {} ({statuses}); workers killed {}; takeovers {}; retries {}; repeated calls absorbed by keys {}; open items {}; duplicates found {}",
            self.sagas,
            self.kills,
            self.takeovers,
            self.retries,
            self.repeats_absorbed,
            self.open_items,
            self.duplicates
        )?;
        if self.unknown_outcomes > 0 {
            write!(
                f,
                "; unknown outcomes escalated (open unknown_outcome items) {}",
                self.unknown_outcomes
            )?;
        }
        if self.skipped > 0 {
            write!(f, "; steps skipped by a cap {}", self.skipped)?;
        }
        Ok(())
    }
}

/// One saga's steps, history and ledger entries, for a failure report.
async fn describe(pool: &PgPool, saga: &str) -> String {
    let lines = |sql: &'static str| async move {
        sqlx::query_scalar::<_, String>(sql)
            .bind(saga)
            .fetch_all(pool)
            .await
            .unwrap_or_else(|err| vec![format!("({err})")])
            .join("\n      ")
    };
    format!(
        "    saga: {}\n    steps:\n      {}\n    history:\n      {}\n    ledger calls:\n      {}\n    ledger effects:\n      {}\n    policy uses:\n      {}",
        lines("SELECT saga_type || ' ' || status || ' ' || COALESCE(status_reason, '') || ' input ' || input::text
                 FROM saga.saga_instances WHERE id::text = $1").await,
        lines("SELECT step_index || ' ' || name || ' ' || phase || ' ' || status || ' attempt ' || attempt
                      || ' ' || COALESCE(last_error, '') || ' output ' || COALESCE(output::text, '-')
                 FROM saga.saga_steps WHERE saga_id::text = $1 ORDER BY step_index, phase").await,
        lines("SELECT seq || ' ' || kind || ' ' || COALESCE(step, '') || ' ' || COALESCE(phase, '')
                      || ' ' || COALESCE(attempt::text, '') || ' ' || COALESCE(detail, '')
                 FROM saga.saga_events WHERE saga_id::text = $1 ORDER BY seq").await,
        lines("SELECT id || ' ' || key || ' attempt ' || attempt || ' by ' || worker
                 FROM public.ledger_calls WHERE saga_id = $1 ORDER BY id").await,
        lines("SELECT seq || ' ' || key || ' calls ' || calls || ' first attempt ' || first_attempt
                      || ' by ' || first_worker || COALESCE(' entity ' || entity, '')
                 FROM public.ledger_effects WHERE saga_id = $1 ORDER BY seq").await,
        lines("SELECT kind || ' ' || name || ' key ' || use_key || ' step ' || step_index
                      || ' attempt ' || attempt || ' slot ' || slot || ' expires ' || expires_at
                 FROM saga.saga_policy_slots WHERE saga_id::text = $1
                UNION ALL
               SELECT kind || ' ' || name || ' key ' || use_key || ' step ' || step_index
                      || ' attempt ' || attempt || ' at ' || used_at
                 FROM saga.saga_policy_uses WHERE saga_id::text = $1").await,
    )
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get::<Option<i64>, _>(0))
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
        .unwrap_or(0)
}

/// Checks every invariant; `started` is how many sagas the scenario started. Returns the
/// summary, or panics naming each violated invariant.
pub(crate) async fn check(pool: &PgPool, started: i64, kills: u64) -> Summary {
    let mut violations = Vec::new();
    let sagas = scalar(pool, "SELECT COUNT(*) FROM saga.saga_instances").await;
    if sagas != started {
        violations.push(format!(
            "no saga was lost or added: {started} started, {sagas} stored"
        ));
    }
    for (name, sql) in CHECKS {
        let sql = sql
            .replace("COMPENSABLE", COMPENSABLE)
            .replace("WAITING", WAITING)
            .replace("GROUPED", GROUPED)
            .replace("CHILD_STEPS", CHILD_STEPS)
            .replace("CAPPED", CAPPED);
        let count = scalar(pool, &format!("SELECT COUNT(*) FROM ({sql}) violations")).await;
        if count != 0 {
            let example: String = sqlx::query_scalar(&format!("{sql} LIMIT 1"))
                .fetch_one(pool)
                .await
                .unwrap_or_default();
            violations.push(format!(
                "{name}: {count} violation(s), for example saga {example}:\n{}",
                describe(pool, &example).await
            ));
        }
    }
    let by_status = sqlx::query(
        "SELECT status, COUNT(*) FROM saga.saga_instances GROUP BY status ORDER BY status",
    )
    .fetch_all(pool)
    .await
    .expect("count by status")
    .iter()
    .map(|row| (row.get::<String, _>(0), row.get::<i64, _>(1)))
    .collect();
    let duplicates = scalar(
        pool,
        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM public.ledger_effects
                                         GROUP BY saga_id, step_index, phase
                                        HAVING COUNT(*) > 1) twice)
              + (SELECT COUNT(*) FROM public.ledger_calls c
                   JOIN saga.saga_steps st ON st.idempotency_key = c.key
                  WHERE st.status = 'completed' AND c.attempt > st.attempt)
              + (SELECT COUNT(*) FROM saga.saga_events started
                   JOIN saga.saga_events done
                     ON done.saga_id = started.saga_id AND done.step = started.step
                    AND done.phase = started.phase
                  WHERE done.kind = 'step_completed' AND started.kind = 'step_started'
                    AND started.seq > done.seq)",
    )
    .await;
    let summary = Summary {
        sagas,
        by_status,
        kills,
        takeovers: scalar(
            pool,
            "SELECT COUNT(*) FROM saga.saga_events WHERE kind = 'lease_taken_over'",
        )
        .await,
        retries: scalar(
            pool,
            "SELECT COUNT(*) FROM saga.saga_events WHERE kind = 'step_started' AND attempt > 1",
        )
        .await,
        repeats_absorbed: scalar(
            pool,
            "SELECT COALESCE(SUM(calls - 1), 0)::bigint FROM public.ledger_effects",
        )
        .await,
        duplicates,
        open_items: scalar(
            pool,
            "SELECT COUNT(*) FROM saga.saga_interventions WHERE status = 'open'",
        )
        .await,
        unknown_outcomes: scalar(
            pool,
            "SELECT COUNT(*) FROM saga.saga_interventions
              WHERE status = 'open' AND kind = 'unknown_outcome'",
        )
        .await,
        skipped: scalar(
            pool,
            "SELECT COUNT(*) FROM saga.saga_steps WHERE status = 'skipped'",
        )
        .await,
    };
    assert!(
        violations.is_empty(),
        "invariants violated:\n  {}\nsummary: {summary}",
        violations.join("\n  ")
    );
    summary
}
