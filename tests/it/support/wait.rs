//! Waiting for a condition with a deadline, never sleeping and then asserting.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is checked again.
const EVERY: Duration = Duration::from_millis(25);

/// Checks `probe` until it settles (`true`, `Some`, `Ok`) and returns what it settled on; panics
/// with `what` and the last unsettled answer once `within` has passed.
pub async fn eventually<P, Fut>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Fut,
) -> P::Value
where
    P: Settles,
    Fut: Future<Output = P>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match probe().await.settle() {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting: {what} (last: {last})"
        );
        tokio::time::sleep(EVERY).await;
    }
}

/// What a probe answers: settled with a value, or not yet (with what it saw, for the panic).
pub trait Settles {
    type Value;
    fn settle(self) -> Result<Self::Value, String>;
}

impl Settles for bool {
    type Value = ();
    fn settle(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("false".into()) }
    }
}

impl<T> Settles for Option<T> {
    type Value = T;
    fn settle(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

impl<T, E: Display> Settles for Result<T, E> {
    type Value = T;
    fn settle(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}
