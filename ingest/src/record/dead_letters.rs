//! Dead letters (rejected input, kept for inspection and counted by reason) and the
//! per-gateway envelope sequence numbers used to notice replays.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use vitals::{GatewayId, RejectReason};

use super::{Record, RecordError, Result, from_us, now_us, with_pool};

/// The most payload bytes stored with a dead letter (the first 64 KiB; the full length is
/// kept beside it). Wire payloads may be up to 512 KiB; 64 KiB shows what went wrong without
/// letting rejected input grow the record eight times faster than accepted input.
pub const MAX_DEAD_LETTER_PAYLOAD: usize = 64 * 1024;
const MAX_TOPIC: usize = 1024;
const MAX_ERROR: usize = 4096;

/// A stored rejection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// The MQTT topic it arrived on (at most 1 KiB kept).
    pub topic: String,
    /// The gateway it claimed to come from, when that could be told.
    pub gateway: Option<GatewayId>,
    /// Why it was rejected.
    pub reason: RejectReason,
    /// The error, naming the field and the problem (at most 4 KiB kept).
    pub error: String,
    /// The first [`MAX_DEAD_LETTER_PAYLOAD`] bytes of the payload.
    pub payload: Vec<u8>,
    /// The payload's full length.
    pub payload_len: u64,
    /// How many times this same payload was rejected for this reason on this topic.
    pub count: u64,
    /// First rejection.
    pub first_received_at: OffsetDateTime,
    /// Latest rejection.
    pub last_received_at: OffsetDateTime,
}

/// What [`Record::check_and_advance_seq`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqCheck {
    /// The first message from this gateway.
    First,
    /// The number after the last one seen.
    InOrder,
    /// Ahead of the next expected number: `missing` messages were never seen (or were
    /// rejected before their number was checked). Informational.
    Gap {
        /// How many numbers were skipped.
        missing: u64,
    },
    /// A number already seen: a re-delivery after a crash (legitimate; its readings dedup by
    /// id) or a replay. The record's high-water mark does not move back.
    Replay {
        /// The highest number seen before this one.
        last: u64,
    },
}

#[derive(sqlx::FromRow)]
struct DeadLetterRow {
    dead_letter_id: i64,
    topic: String,
    gateway_id: Option<String>,
    reason: String,
    error: String,
    payload: Vec<u8>,
    payload_len: i64,
    count: i64,
    first_received_at: i64,
    last_received_at: i64,
}

impl Record {
    /// Stores a rejected message: its topic, the gateway it claims (if known), the reason,
    /// the error text and the payload capped at [`MAX_DEAD_LETTER_PAYLOAD`] bytes. The same
    /// payload rejected again on the same topic for the same reason increments its `count`.
    pub async fn dead_letter(
        &self,
        topic: &str,
        gateway: Option<&GatewayId>,
        reason: RejectReason,
        error: &str,
        payload: &[u8],
    ) -> Result<()> {
        let at = now_us();
        let fingerprint = fingerprint(topic, reason, payload);
        let topic = truncate(topic, MAX_TOPIC);
        let error = truncate(error, MAX_ERROR);
        let kept = &payload[..payload.len().min(MAX_DEAD_LETTER_PAYLOAD)];
        let len = i64::try_from(payload.len()).unwrap_or(i64::MAX);
        with_pool!(self, write, |pool, DB| {
            sqlx::query(
                "INSERT INTO dead_letters (fingerprint, first_received_at, last_received_at, \
                 topic, gateway_id, reason, error, payload, payload_len, count) \
                 VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, 1) \
                 ON CONFLICT (fingerprint) DO UPDATE SET \
                 count = dead_letters.count + 1, last_received_at = excluded.last_received_at, \
                 error = excluded.error",
            )
            .bind(fingerprint.as_str())
            .bind(at)
            .bind(topic)
            .bind(gateway.map(GatewayId::as_str))
            .bind(reason.as_str())
            .bind(error)
            .bind(kept)
            .bind(len)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Rejections so far by reason (repeats included), for every reason with at least one.
    pub async fn dead_letter_counts(&self) -> Result<BTreeMap<RejectReason, u64>> {
        let rows: Vec<(String, i64)> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(
                "SELECT reason, CAST(SUM(count) AS BIGINT) FROM dead_letters GROUP BY reason",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(reason, n)| Ok((reject_reason(&reason)?, n.max(0) as u64)))
            .collect()
    }

    /// The most recently rejected messages, newest first.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        let rows: Vec<DeadLetterRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(
                "SELECT dead_letter_id, topic, gateway_id, reason, error, payload, payload_len, \
                 count, first_received_at, last_received_at FROM dead_letters \
                 ORDER BY last_received_at DESC, dead_letter_id DESC LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|r| {
                Ok(DeadLetter {
                    id: r.dead_letter_id,
                    topic: r.topic,
                    // A claimed gateway id that was not valid is kept as "unknown".
                    gateway: r.gateway_id.and_then(|g| GatewayId::new(g).ok()),
                    reason: reject_reason(&r.reason)?,
                    error: r.error,
                    payload: r.payload,
                    payload_len: r.payload_len.max(0) as u64,
                    count: r.count.max(0) as u64,
                    first_received_at: from_us(r.first_received_at, "dead_letters")?,
                    last_received_at: from_us(r.last_received_at, "dead_letters")?,
                })
            })
            .collect()
    }

    /// Records envelope number `seq` from `gateway` and says how it relates to the highest
    /// number seen before (see [`SeqCheck`]). The high-water mark only moves forward; one
    /// atomic statement, so concurrent ingest nodes agree.
    ///
    /// A [`SeqCheck::Replay`] is a flag, not a verdict: keep and store the message's readings
    /// (duplicates dedup by id), count the replay, and let an operator look when a gateway
    /// replays often.
    pub async fn check_and_advance_seq(&self, gateway: &GatewayId, seq: u64) -> Result<SeqCheck> {
        let seq_i = i64::try_from(seq).map_err(|_| {
            RecordError::Invalid(format!("envelope sequence number {seq} is over i64::MAX"))
        })?;
        let previous: Option<i64> = with_pool!(self, write, |pool, DB| {
            sqlx::query_scalar(
                "INSERT INTO gateway_seq (gateway_id, last_seq, previous_seq, replays, updated_at) \
                 VALUES ($1, $2, NULL, 0, $3) \
                 ON CONFLICT (gateway_id) DO UPDATE SET \
                 previous_seq = gateway_seq.last_seq, \
                 last_seq = CASE WHEN excluded.last_seq > gateway_seq.last_seq \
                   THEN excluded.last_seq ELSE gateway_seq.last_seq END, \
                 replays = gateway_seq.replays + CASE WHEN excluded.last_seq > gateway_seq.last_seq \
                   THEN 0 ELSE 1 END, \
                 updated_at = excluded.updated_at \
                 RETURNING previous_seq",
            )
            .bind(gateway.as_str())
            .bind(seq_i)
            .bind(now_us())
            .fetch_one(pool)
            .await?
        });
        Ok(match previous {
            None => SeqCheck::First,
            Some(last) => {
                let last = last.max(0) as u64;
                if seq <= last {
                    SeqCheck::Replay { last }
                } else if seq == last + 1 {
                    SeqCheck::InOrder
                } else {
                    SeqCheck::Gap {
                        missing: seq - last - 1,
                    }
                }
            }
        })
    }

    /// How many replays have been flagged for `gateway`.
    pub async fn replay_count(&self, gateway: &GatewayId) -> Result<u64> {
        let n: Option<i64> = with_pool!(self, read, |pool, DB| {
            sqlx::query_scalar("SELECT replays FROM gateway_seq WHERE gateway_id = $1")
                .bind(gateway.as_str())
                .fetch_optional(pool)
                .await?
        });
        Ok(n.unwrap_or(0).max(0) as u64)
    }
}

fn reject_reason(s: &str) -> Result<RejectReason> {
    RejectReason::ALL
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| RecordError::corrupt("dead_letters", format!("unknown reason `{s}`")))
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// 128-bit FNV-1a of topic, reason and the whole payload, as hex: stable across builds (a
/// std hasher is not), and collisions between distinct rejections are negligible.
fn fingerprint(topic: &str, reason: RejectReason, payload: &[u8]) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    let parts: [&[u8]; 5] = [
        topic.as_bytes(),
        b"\0",
        reason.as_str().as_bytes(),
        b"\0",
        payload,
    ];
    for part in parts {
        for &b in part {
            h ^= u128::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    format!("{h:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("aéb", 3), "aé");
    }

    #[test]
    fn fingerprints_differ_by_topic_reason_and_payload() {
        let a = fingerprint("t", RejectReason::Schema, b"x");
        assert_eq!(a, fingerprint("t", RejectReason::Schema, b"x"));
        assert_ne!(a, fingerprint("u", RejectReason::Schema, b"x"));
        assert_ne!(a, fingerprint("t", RejectReason::NotUtf8, b"x"));
        assert_ne!(a, fingerprint("t", RejectReason::Schema, b"y"));
    }
}
