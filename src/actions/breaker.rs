//! A circuit breaker per destination host: after `failures` consecutive failures the circuit
//! opens and requests fail at once; after `reset` one trial request goes through (half-open),
//! and its result closes or re-opens the circuit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct Breakers {
    failures: u32,
    reset: Duration,
    hosts: Mutex<HashMap<String, Circuit>>,
}

#[derive(Debug, Default)]
struct Circuit {
    consecutive_failures: u32,
    /// Set while open; the trial request is let through once `reset` has passed since then.
    opened_at: Option<Instant>,
    trial_in_flight: bool,
}

/// Whether a request may go out.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Closed,
    /// The one trial request of a half-open circuit.
    Trial,
    Open,
}

impl Breakers {
    pub fn new(failures: u32, reset: Duration) -> Breakers {
        metrics::describe_gauge!(
            CIRCUIT_OPEN_GAUGE,
            "1 while the http.post circuit breaker for a destination host is open (or half-open), else 0"
        );
        Breakers {
            failures: failures.max(1),
            reset,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    pub fn admit(&self, host: &str) -> Admit {
        let mut hosts = self.lock();
        let circuit = hosts.entry(host.to_owned()).or_default();
        match circuit.opened_at {
            None => Admit::Closed,
            Some(opened) if !circuit.trial_in_flight && opened.elapsed() >= self.reset => {
                circuit.trial_in_flight = true;
                Admit::Trial
            }
            Some(_) => Admit::Open,
        }
    }

    pub fn record_success(&self, host: &str) {
        let mut hosts = self.lock();
        let circuit = hosts.entry(host.to_owned()).or_default();
        let was_open = circuit.opened_at.is_some();
        *circuit = Circuit::default();
        if was_open {
            tracing::info!(host, "http circuit closed");
            set_gauge(host, 0.0);
        }
    }

    pub fn record_failure(&self, host: &str) {
        let mut hosts = self.lock();
        let circuit = hosts.entry(host.to_owned()).or_default();
        circuit.consecutive_failures = circuit.consecutive_failures.saturating_add(1);
        let trial_failed = circuit.trial_in_flight;
        if trial_failed || circuit.consecutive_failures >= self.failures {
            if circuit.opened_at.is_none() {
                tracing::warn!(
                    host,
                    failures = circuit.consecutive_failures,
                    "http circuit opened"
                );
                set_gauge(host, 1.0);
            }
            circuit.opened_at = Some(Instant::now());
            circuit.trial_in_flight = false;
        }
    }

    /// A trial request that ended without a verdict on the host (refused locally, cancelled):
    /// let the next request be the trial instead.
    pub fn release_trial(&self, host: &str) {
        if let Some(circuit) = self.lock().get_mut(host) {
            circuit.trial_in_flight = false;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Circuit>> {
        // The map stays consistent even if a holder panicked: every update is one assignment.
        self.hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn set_gauge(host: &str, value: f64) {
    metrics::gauge!(CIRCUIT_OPEN_GAUGE, "host" => host.to_owned()).set(value);
}

pub const CIRCUIT_OPEN_GAUGE: &str = "playbookd_http_circuit_open";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_and_lets_one_trial_through_after_reset() {
        let breakers = Breakers::new(2, Duration::from_millis(50));
        breakers.record_failure("h");
        assert_eq!(breakers.admit("h"), Admit::Closed);
        breakers.record_failure("h");
        assert_eq!(breakers.admit("h"), Admit::Open);
        assert_eq!(breakers.admit("other"), Admit::Closed);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(breakers.admit("h"), Admit::Trial);
        assert_eq!(breakers.admit("h"), Admit::Open);
        breakers.record_failure("h");
        assert_eq!(breakers.admit("h"), Admit::Open);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(breakers.admit("h"), Admit::Trial);
        breakers.record_success("h");
        assert_eq!(breakers.admit("h"), Admit::Closed);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let breakers = Breakers::new(2, Duration::from_secs(60));
        breakers.record_failure("h");
        breakers.record_success("h");
        breakers.record_failure("h");
        assert_eq!(breakers.admit("h"), Admit::Closed);
    }
}
