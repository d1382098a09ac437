//! The store conformance suite: one async function per guarantee, generic over the backend.
//! Every backend (memory, SQLite, Postgres) runs all of it through [`conformance_suite!`](crate::conformance_suite).
//!
//! - [`store`]: the Store contract itself (claims, leases and fencing, dedup on start,
//!   transitions, history, interventions).
//! - [`scenarios`]: the orchestrator's guarantees end to end on that backend (compensation order,
//!   retries, escalation, crash and resume, parking of unresumable sagas).
//! - [`waiting`]: sagas that wait (timers, signals, approvals, deadlines, pivot steps).
//! - [`policies`]: policies before side effects (caps, rate limits, throttling, per-key
//!   concurrency, retry budgets, pauses).
//! - [`groups`]: parallel groups (steps that run at once, stop together, and are undone
//!   together).
//! - [`children`]: child sagas (started by a step, awaited without a worker, compensated or
//!   cancelled with their parent).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod children;
pub mod groups;
pub mod policies;
pub mod scenarios;
pub mod store;
pub mod waiting;

/// Generates one `#[tokio::test]` per conformance function in a module named `$backend`.
/// `$make` is an async expression (evaluated once per test) that yields a fresh, empty store.
///
/// ```
/// saga_store::conformance_suite!(memory, async { saga_core::MemoryStore::new() });
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::__conformance_tests!($make;
                // Store contract
                create_then_load_round_trips,
                start_key_dedup_returns_existing_or_conflicts,
                claim_takes_each_due_saga_once,
                claim_respects_limit_and_next_run_at,
                expired_lease_is_taken_over_and_stale_writes_are_fenced,
                apply_is_all_or_nothing,
                completed_step_never_restarts,
                step_transitions_persist,
                escalation_opens_one_intervention_and_parks,
                settled_sagas_are_never_claimed,
                history_records_each_change_in_order,
                list_filters_and_pages,
                count_by_status_counts,
                claim_loaded_returns_what_load_would,
                a_saga_created_leased_belongs_to_its_starter_until_the_lease_expires,
                a_creation_can_begin_the_first_step,
                a_restarted_worker_takes_back_its_own_leases_at_once,
                an_immediate_cancel_fences_off_a_holder_that_was_still_alive,
                one_batch_that_fails_and_begins_a_phase_writes_its_net_effect,
                a_refused_batch_reports_its_first_refusal_alike,
                a_signal_delivered_meanwhile_refuses_a_timeout_and_wakes_a_wait,
                the_overview_counts_by_type_series_stuck_steps_and_the_queue,
                writes_of_many_sagas_at_once_each_get_their_own_outcome;
                // Orchestrator scenarios
                saga_completes_with_full_history,
                permanent_failure_compensates_in_reverse_order,
                transient_failures_retry_with_backoff_up_to_max_attempts,
                permanent_error_skips_retries,
                failed_compensation_opens_exactly_one_intervention,
                crash_mid_step_resumes_with_same_key_and_never_reruns_completed_steps,
                start_with_key_dedups_and_conflicts,
                changed_definition_parks_saga,
                unknown_saga_type_parks_saga,
                undecodable_input_parks_saga,
                panicking_step_is_an_unknown_outcome_retried_with_its_key_and_worker_survives,
                hanging_step_times_out_and_is_retried,
                oversized_payloads_are_refused,
                graceful_shutdown_releases_leases,
                derived_and_hand_written_sagas_record_identical_histories,
                operator_retry_reruns_the_failed_compensation_with_the_same_key,
                operator_resolve_marks_the_compensation_done_and_continues,
                operator_cancel_stops_the_saga_where_it_is,
                settling_repeatedly_or_concurrently_lets_exactly_one_win,
                batch_retry_honours_its_bound_and_reports_each_item,
                cancelling_a_running_saga_compensates_what_completed,
                parked_saga_is_redriven_once_the_code_is_fixed,
                lifecycle_hooks_fire_once_per_event,
                prune_removes_only_old_finished_sagas,
                ambiguous_commits_are_recorded_and_announced_once,
                a_worker_restarted_under_its_id_resumes_its_sagas_without_waiting_for_the_lease,
                a_cancel_during_a_retry_backoff_settles_the_begun_step_then_compensates_it,
                a_cancel_after_a_worker_died_mid_action_compensates_that_action,
                re_driving_a_saga_parked_while_compensating_keeps_compensating,
                an_output_with_a_nul_character_is_escalated_alike_then_retried_by_an_operator,
                an_operator_resolves_an_unknown_outcome_as_not_applied_and_the_saga_compensates,
                a_step_that_panics_before_its_future_exists_is_caught_like_any_panic,
                a_probe_that_finds_the_effect_completes_the_step_without_running_it_again,
                a_probe_that_finds_no_effect_lets_the_step_run_again,
                a_probe_that_cannot_answer_escalates_the_unknown_outcome,
                a_probe_waits_for_the_attempts_deadline_before_believing_it_found_nothing,
                a_worker_whose_clock_runs_ahead_takes_over_no_live_lease,
                a_retry_scheduled_by_a_worker_whose_clock_runs_ahead_is_not_delayed,
                values_with_nul_characters_are_refused_or_cleaned_alike,
                a_cancel_requested_before_an_escalation_holds_when_the_operator_retries;
                // Sagas that wait
                a_signal_sent_before_the_wait_is_kept_and_consumed_once,
                a_signal_during_the_wait_wakes_the_saga_which_held_nothing_meanwhile,
                signals_to_unknown_finished_or_mismatched_sagas_are_refused,
                a_wait_that_times_out_compensates_or_records_its_default,
                a_timer_fires_once_after_a_restart_mid_sleep,
                cancelling_a_waiting_saga_compensates_it,
                approval_by_an_authorized_operator_continues_and_others_are_refused,
                bulk_approval_honours_its_bound,
                a_saga_past_its_deadline_stops_waiting_and_compensates,
                past_the_pivot_a_failure_waits_for_a_person_and_nothing_is_compensated;
                // Policies before side effects
                a_cap_lets_one_effect_per_entity_through_and_skips_the_rest,
                a_cap_counts_a_step_once_across_its_attempts,
                a_cap_frees_after_its_window,
                a_rate_limit_is_never_exceeded_and_spends_no_attempt,
                throttling_backs_off_the_whole_integration,
                per_key_concurrency_holds_the_excess_until_a_slot_frees,
                a_spent_retry_budget_fails_the_step_and_the_saga_compensates,
                a_pause_holds_new_attempts_until_resumed,
                a_dedup_window_returns_the_saga_inside_it_and_starts_anew_after,
                a_spent_retry_budget_after_an_unknown_outcome_escalates_it;
                // Parallel groups
                a_group_runs_its_steps_at_once_within_its_limit_and_completes_when_all_do,
                a_failed_group_step_stops_the_group_and_its_completed_steps_are_undone_at_once_before_the_earlier_ones,
                a_group_step_whose_outcome_is_unknown_is_settled_then_compensated_with_the_others,
                a_cancel_while_a_group_runs_begins_none_of_its_waiting_steps,
                a_group_compensation_that_fails_is_escalated_once_the_others_are_settled,
                a_cancel_refusing_the_group_keeps_the_outcome_of_the_step_before_it,
                a_failed_group_compensation_lets_the_others_run_before_a_person_is_called;
                // Child sagas
                a_child_that_completes_completes_its_step_with_its_outputs,
                a_child_that_compensates_fails_its_step_and_the_parent_compensates,
                a_parent_compensated_after_its_child_completed_compensates_the_child_first,
                a_parent_cancelled_while_its_child_runs_cancels_the_child,
                a_parent_and_its_child_started_twice_with_one_key_run_once,
                a_child_waiting_for_a_person_keeps_its_parent_waiting_until_it_is_settled,
                a_cancel_requested_while_the_parent_runs_starts_no_child,
                a_child_a_person_cancelled_leaves_its_parents_step_to_a_person,
            );
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($make:expr; $($store_test:ident),* ; $($scenario:ident),* ; $($waiting:ident),* ; $($policy:ident),* ; $($group:ident),* ; $($child:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $store_test() {
                let store = $make.await;
                $crate::conformance::store::$store_test(::std::sync::Arc::new(store)).await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let store = $make.await;
                $crate::conformance::scenarios::$scenario(::std::sync::Arc::new(store)).await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $waiting() {
                let store = $make.await;
                $crate::conformance::waiting::$waiting(::std::sync::Arc::new(store)).await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $policy() {
                let store = $make.await;
                $crate::conformance::policies::$policy(::std::sync::Arc::new(store)).await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $group() {
                let store = $make.await;
                $crate::conformance::groups::$group(::std::sync::Arc::new(store)).await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $child() {
                let store = $make.await;
                $crate::conformance::children::$child(::std::sync::Arc::new(store)).await;
            }
        )*
    };
}
