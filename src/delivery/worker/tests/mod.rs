//! The delivery rules on paused time: a real embedded buffer, the real supervisor, worker,
//! batcher and local limiter, and an in-process stand-in for the API that answers by script.
//! Tokio's clock only moves when every task waits, so hours of outage take milliseconds and
//! every timing bound below is exact rather than a guess about a loaded machine.

mod claims;
mod helpers;
mod pauses;
mod poison;
