//! Results a job cannot forge.
//!
//! The dispatcher makes a random key per job ([`new_key`]) and sends it in
//! the job's message ([`Job::result_key`]); the worker keeps it in its own
//! memory (never in the command's environment, never on disk) and proves
//! its result with an HMAC-SHA256 over the result's encoding without the
//! proof ([`sign`]). The dispatcher accepts a result for a job that has a
//! key only if [`verify`] says so: a command that reaches the broker (with
//! credentials it found, or a broker open to it) can publish a result, but
//! not one with a valid proof, since it never saw the key. Why results
//! without a proof are still accepted for jobs without a key (and only for
//! those) is in docs/DESIGN.md.
//!
//! [`Job::result_key`]: crate::messages::Job::result_key

use crate::messages::{JobResult, encode};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of a job's key (the HMAC-SHA256 block's worth of strength).
const KEY_BYTES: usize = 32;

/// A fresh random key, hex.
pub fn new_key() -> String {
    let mut key = [0_u8; KEY_BYTES];
    SystemRandom::new()
        .fill(&mut key)
        .expect("the system's random number generator works");
    hex(&key)
}

/// Sets `result.proof` to its HMAC under `key` (hex, as in the job).
pub fn sign(result: &mut JobResult, key: &str) {
    result.proof = None;
    let tag = hmac::sign(&hmac_key(key), &encode(&*result));
    result.proof = Some(hex(tag.as_ref()));
}

/// Whether `result.proof` is the HMAC of the rest of it under `key`
/// (checked in constant time).
pub fn verify(result: &JobResult, key: &str) -> bool {
    let Some(proof) = result.proof.as_deref().and_then(unhex) else {
        return false;
    };
    let mut unsigned = result.clone();
    unsigned.proof = None;
    hmac::verify(&hmac_key(key), &encode(&unsigned), &proof).is_ok()
}

/// The key's bytes (a key that is not hex is used as it is written: it then
/// still has to match on both sides).
fn hmac_key(key: &str) -> hmac::Key {
    let bytes = unhex(key).unwrap_or_else(|| key.as_bytes().to_vec());
    hmac::Key::new(hmac::HMAC_SHA256, &bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CommitId, JobId, RepoName, WorkerId};
    use crate::messages::{JobStatus, decode};
    use chrono::Utc;

    fn result() -> JobResult {
        JobResult {
            job_id: JobId::new(),
            attempt: 1,
            run_id: uuid::Uuid::new_v4(),
            worker: WorkerId::parse("w-1").unwrap(),
            host: "h".into(),
            repo: RepoName::parse("api").unwrap(),
            sha: CommitId::parse(&"ab".repeat(20)).unwrap(),
            status: JobStatus::Failed,
            exit_code: Some(1),
            signal: None,
            message: None,
            started_at: Utc::now(),
            finished_at: Utc::now(),
            checkout_ms: 12,
            duration_ms: 345,
            output: "1 failed \u{fffd} é\n".into(),
            output_truncated: false,
            output_bytes: 20,
            tests: Vec::new(),
            file_timings: Vec::new(),
            report_problem: None,
            proof: None,
        }
    }

    #[test]
    fn a_signed_result_verifies_after_the_wire_and_nothing_else_does() {
        let key = new_key();
        assert_eq!(key.len(), 64);
        let mut signed = result();
        sign(&mut signed, &key);
        let received = decode::<JobResult>(&encode(&signed)).unwrap();
        assert!(verify(&received, &key));

        assert!(!verify(&received, &new_key()), "another job's key");
        let mut forged = received.clone();
        forged.status = JobStatus::Passed;
        forged.output = "all good".into();
        assert!(!verify(&forged, &key), "an edited result");
        let mut unsigned = received;
        unsigned.proof = None;
        assert!(!verify(&unsigned, &key), "no proof");
        unsigned.proof = Some("zz".into());
        assert!(!verify(&unsigned, &key), "a proof that is not hex");
    }
}
