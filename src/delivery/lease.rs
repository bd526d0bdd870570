//! The lease on this process's consumer name (Redis backend): two live processes reading through
//! one consumer name would each take the other's claims as their own (a restarted consumer
//! resumes its "own" pending entries at once), so a name is held by one process at a time.
//!
//! - The lease is a Redis key holding a random nonce with an expiry of one visibility timeout,
//!   renewed every third of it while delivery runs, and deleted on a clean stop.
//! - The nonce is kept in a file beside the data (`<buffer.path's directory>/consumer-<name>.lease`),
//!   locked while the process runs. A process that was killed and restarts on the same directory
//!   (a restarted container) finds its nonce there and takes its still-live lease back at once;
//!   a second process on the same directory cannot take the file lock and refuses to start.
//! - Started elsewhere (no file) while another process holds the name, casegate refuses to start
//!   and names the setting. If that holder is gone for good, the lease runs out within one
//!   visibility timeout.
//! - Redis unreachable at startup: casegate starts, and delivery waits until it holds the lease.
//!
//! The embedded backend needs none of this: its file lock admits one process.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

use crate::buffer::{BufferError, RedisBuffer};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "another live casegate process uses the consumer name `{name}` ({held}); give every \
         replica its own name with delivery.consumer (CASEGATE_DELIVERY__CONSUMER). If that \
         process is gone, its lease runs out in {left_secs} s"
    )]
    Taken {
        name: String,
        held: &'static str,
        left_secs: u64,
    },
    #[error(transparent)]
    Buffer(#[from] BufferError),
}

/// This process's hold on its consumer name.
pub struct ConsumerLease {
    buffer: RedisBuffer,
    name: String,
    nonce: String,
    ttl: Duration,
    held: bool,
    /// Locked for as long as the process runs (released by the kernel when it dies).
    _file: Option<File>,
}

impl ConsumerLease {
    /// Takes the lease on `name` for `ttl`, keeping the nonce in `data_dir`. Fails when another
    /// live process holds it; when Redis does not answer, succeeds without holding it yet
    /// ([`Self::run_holding`] takes it before delivering).
    pub async fn take(
        buffer: &RedisBuffer,
        name: &str,
        data_dir: &Path,
        ttl: Duration,
    ) -> Result<ConsumerLease, LeaseError> {
        let taken = |held, left: Duration| LeaseError::Taken {
            name: name.to_string(),
            held,
            left_secs: left.as_secs().max(1),
        };
        let (file, nonce) = match nonce_file(name, data_dir) {
            Ok(Some(kept)) => kept,
            Ok(None) => return Err(taken("on this data directory", ttl)),
            Err(error) => {
                tracing::warn!(dir = %data_dir.display(), %error, "cannot keep the consumer lease beside the data; a restart will wait for the old lease to run out");
                (None, new_nonce())
            }
        };
        let mut lease = ConsumerLease {
            buffer: buffer.clone(),
            name: name.to_string(),
            nonce,
            ttl,
            held: false,
            _file: file,
        };
        match lease.buffer.lease_consumer(name, &lease.nonce, ttl).await {
            Ok(None) => lease.held = true,
            Ok(Some(left)) => return Err(taken("in Redis", left)),
            Err(error) => {
                tracing::warn!(%error, "cannot take the consumer lease yet; delivery waits for it");
            }
        }
        Ok(lease)
    }

    /// Runs `work` (delivery) while holding the lease: takes it first if startup could not,
    /// renews it every third of its time, and gives it up when `work` ends.
    pub async fn run_holding(
        mut self,
        work: impl Future<Output = ()>,
        shutdown: watch::Receiver<bool>,
    ) {
        let every = (self.ttl / 3).max(Duration::from_millis(10));
        let mut waiting_logged = false;
        while !self.held {
            match self
                .buffer
                .lease_consumer(&self.name, &self.nonce, self.ttl)
                .await
            {
                Ok(None) => self.held = true,
                Ok(Some(left)) if !waiting_logged => {
                    tracing::error!(consumer = %self.name, left_ms = left.as_millis() as u64, "another live process holds this consumer name (delivery.consumer); delivery waits for its lease");
                    waiting_logged = true;
                }
                Err(error) if !waiting_logged => {
                    tracing::warn!(%error, "cannot take the consumer lease; retrying");
                    waiting_logged = true;
                }
                _ => {}
            }
            if !self.held {
                let mut stop = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
        let renewal = async {
            loop {
                tokio::time::sleep(every).await;
                match self
                    .buffer
                    .lease_consumer(&self.name, &self.nonce, self.ttl)
                    .await
                {
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        tracing::error!(consumer = %self.name, "another process took this consumer name (delivery.consumer) while this one was cut off; give every replica its own name")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "renewing the consumer lease failed; retrying")
                    }
                }
            }
        };
        tokio::select! {
            _ = work => {}
            _ = renewal => {}
        }
        if let Err(error) = self.buffer.release_consumer(&self.name, &self.nonce).await {
            tracing::warn!(%error, "could not give up the consumer lease; it runs out by itself");
        }
    }
}

fn new_nonce() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// Opens and locks `consumer-<name>.lease` in `dir`, returning it with the nonce it keeps (a new
/// one written if it held none). `Ok(None)`: another live process holds the file.
fn nonce_file(name: &str, dir: &Path) -> std::io::Result<Option<(Option<File>, String)>> {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    std::fs::create_dir_all(dir)?;
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(format!("consumer-{safe}.lease")))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(error)) => return Err(error),
    }
    let mut kept = String::new();
    file.read_to_string(&mut kept)?;
    // The name is in the file too: two names that map to one file name never share a nonce.
    let nonce = match kept.split_once('\n') {
        Some((kept_name, nonce)) if kept_name == name && nonce.trim().len() == 32 => {
            nonce.trim().to_string()
        }
        _ => {
            let nonce = new_nonce();
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(format!("{name}\n{nonce}\n").as_bytes())?;
            file.sync_all()?;
            nonce
        }
    };
    Ok(Some((Some(file), nonce)))
}
