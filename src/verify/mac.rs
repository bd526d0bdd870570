//! The MAC primitives every HMAC scheme shares: redacted keys, the bound on signature
//! candidates, and constant-time matching that computes each key's MAC at most once.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::VerifyError;

/// A MAC key's bytes. Its `Debug` is redacted like [`Secret`](crate::secret::Secret)'s.
#[derive(Clone)]
pub(super) struct Key(pub(super) Vec<u8>);

impl Key {
    pub(super) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(***)")
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Most signature candidates one request may carry. Providers send one, or two while a secret
/// rotates; a header with more is refused as `malformed_signature_header` before anything is
/// hashed, so the work a request can cause is bounded by the configured secrets, not by it.
pub const MAX_SIGNATURE_CANDIDATES: usize = 8;

/// Length of an HMAC-SHA256 tag; candidates of any other length are dropped unhashed.
const SHA256_TAG_LEN: usize = 32;

/// Refuses a header with more than [`MAX_SIGNATURE_CANDIDATES`] entries.
pub(super) fn check_candidate_count(header: &str, count: usize) -> Result<(), VerifyError> {
    if count > MAX_SIGNATURE_CANDIDATES {
        return Err(VerifyError::bad_format(
            header,
            &format!("more than {MAX_SIGNATURE_CANDIDATES} signatures"),
        ));
    }
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// MACs computed over a request on this thread (tests prove the per-request bound with it).
    static MACS_COMPUTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts one MAC computation over a request (a no-op outside tests).
#[inline]
fn count_mac() {
    #[cfg(test)]
    MACS_COMPUTED.with(|n| n.set(n.get() + 1));
}

/// MACs computed on this thread so far.
#[cfg(test)]
pub(crate) fn macs_computed() -> u64 {
    MACS_COMPUTED.with(|n| n.get())
}

/// HMAC-SHA256 over the concatenation of `parts`, fed piecewise so a large body is not copied.
pub(super) fn hmac_sha256(key: &Key, parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key.bytes()).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

pub(super) fn hmac_sha256_bytes(key: &Key, parts: &[&[u8]]) -> Vec<u8> {
    hmac_sha256(key, parts).finalize().into_bytes().to_vec()
}

/// Accepts when any key's HMAC-SHA256 of `parts` equals any of `tags`; else a mismatch.
pub(super) fn check_hmac_sha256<T: AsRef<[u8]>>(
    keys: &[Key],
    parts: &[&[u8]],
    tags: &[T],
) -> Result<(), VerifyError> {
    matching_hmac_sha256(keys, parts, tags).map(drop)
}

/// [`check_hmac_sha256`] that also returns the MAC that matched, for a scheme whose MAC covers
/// exactly the body: equal bodies under the same secret have equal MACs, so ingest can use it
/// as the body's fingerprint instead of hashing the body a second time.
pub(super) fn matching_hmac_sha256<T: AsRef<[u8]>>(
    keys: &[Key],
    parts: &[&[u8]],
    tags: &[T],
) -> Result<Vec<u8>, VerifyError> {
    matching_tag(keys, tags, SHA256_TAG_LEN, |key| {
        hmac_sha256_bytes(key, parts)
    })
    .ok_or(VerifyError::Mismatch)
}

/// True when any key's HMAC-SHA256 of `parts` equals any of `tags`.
pub(super) fn any_hmac_sha256_matches<T: AsRef<[u8]>>(
    keys: &[Key],
    parts: &[&[u8]],
    tags: &[T],
) -> bool {
    any_tag_matches(keys, tags, SHA256_TAG_LEN, |key| {
        hmac_sha256_bytes(key, parts)
    })
}

/// True when any key's MAC equals any of `tags`. `mac` runs ONCE per key, however many
/// candidates there are. Tags whose length is not `tag_len` cannot match and cost no hashing:
/// when none has it, nothing is computed at all. Every comparison is constant-time and all of
/// them run, so timing does not reveal which key or candidate matched.
pub(super) fn any_tag_matches<T: AsRef<[u8]>>(
    keys: &[Key],
    tags: &[T],
    tag_len: usize,
    mac: impl Fn(&Key) -> Vec<u8>,
) -> bool {
    matching_tag(keys, tags, tag_len, mac).is_some()
}

/// [`any_tag_matches`] returning the first matching key's MAC. Which key matched is not
/// secret (the sender chose it), so picking it out after all comparisons ran leaks nothing.
fn matching_tag<T: AsRef<[u8]>>(
    keys: &[Key],
    tags: &[T],
    tag_len: usize,
    mac: impl Fn(&Key) -> Vec<u8>,
) -> Option<Vec<u8>> {
    let tags: Vec<&[u8]> = tags
        .iter()
        .map(AsRef::as_ref)
        .filter(|tag| tag.len() == tag_len)
        .collect();
    if tags.is_empty() {
        return None;
    }
    let mut found = None;
    for key in keys {
        count_mac();
        let computed = mac(key);
        let mut matched = subtle::Choice::from(0);
        for tag in &tags {
            matched |= subtle::ConstantTimeEq::ct_eq(computed.as_slice(), *tag);
        }
        if bool::from(matched) && found.is_none() {
            found = Some(computed);
        }
    }
    found
}
