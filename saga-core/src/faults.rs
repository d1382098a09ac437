//! Fault points for crash tests: places in the data path where a test can make the process die
//! at the most dangerous instants. Compiled in only with the `fault-injection` feature; without
//! it every point is an empty inline function.
//!
//! Configure with `SAGA_FAULTS`, a comma-separated list of `point=probability` (for example
//! `after_begin_step=0.02,after_action=0.02`), and `SAGA_FAULT_SEED` (default 0). When a point
//! fires the process aborts on the spot, as a SIGKILL would stop it: no destructor runs and
//! nothing more is written.

/// A dangerous instant in the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// `in_progress` is durable; the step's function has not run.
    AfterBeginStep,
    /// The action ran (its effect happened); `completed` is not written yet.
    AfterAction,
    /// A compensation ran; its `completed` is not written yet.
    MidCompensation,
}

impl FaultPoint {
    /// The name used in `SAGA_FAULTS`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultPoint::AfterBeginStep => "after_begin_step",
            FaultPoint::AfterAction => "after_action",
            FaultPoint::MidCompensation => "mid_compensation",
        }
    }
}

#[cfg(feature = "fault-injection")]
mod active {
    use std::sync::{Mutex, OnceLock};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::FaultPoint;

    struct Faults {
        odds: Vec<(String, f64)>,
        rng: Mutex<StdRng>,
    }

    fn faults() -> &'static Faults {
        static FAULTS: OnceLock<Faults> = OnceLock::new();
        FAULTS.get_or_init(|| {
            let odds = std::env::var("SAGA_FAULTS")
                .unwrap_or_default()
                .split(',')
                .filter_map(|pair| {
                    let (name, odds) = pair.split_once('=')?;
                    Some((name.trim().to_owned(), odds.trim().parse().ok()?))
                })
                .collect();
            let seed = std::env::var("SAGA_FAULT_SEED")
                .ok()
                .and_then(|seed| seed.parse().ok())
                .unwrap_or(0u64);
            Faults {
                odds,
                rng: Mutex::new(StdRng::seed_from_u64(seed ^ u64::from(std::process::id()))),
            }
        })
    }

    pub(crate) fn hit(point: FaultPoint) {
        let faults = faults();
        let Some(odds) = faults
            .odds
            .iter()
            .find(|(name, _)| name == point.as_str())
            .map(|(_, odds)| *odds)
        else {
            return;
        };
        let draw: f64 = match faults.rng.lock() {
            Ok(mut rng) => rng.random(),
            Err(_) => return,
        };
        if draw < odds {
            eprintln!("fault injected at {}: aborting", point.as_str());
            std::process::abort();
        }
    }
}

/// Dies here if the test configured this point to fire (feature `fault-injection`).
#[cfg(feature = "fault-injection")]
pub(crate) fn hit(point: FaultPoint) {
    active::hit(point);
}

/// Without the `fault-injection` feature: nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn hit(_point: FaultPoint) {}
