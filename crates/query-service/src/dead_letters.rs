//! The dead-letter stream, for operators: what is there and why, and a
//! re-drive that appends entries to the event stream again, as the relay
//! would, once their cause is fixed. `query-service dead-letters` and
//! `query-service redrive [ID...]` run these.

use std::collections::BTreeMap;

use redis::{aio::ConnectionManager, streams::StreamRangeReply, Value};
use serde::Serialize;

/// Fields the consumer adds to a dead letter; the others are the original
/// entry's.
const SOURCE_ID: &str = "sourceId";
const REASON: &str = "reason";

/// One dead letter.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// The id the entry had in the event stream.
    pub source_id: String,
    /// Why it was given up.
    pub reason: String,
    /// The original entry's fields (`type` and `data` for an event).
    pub fields: BTreeMap<String, String>,
}

pub struct DeadLetters {
    pub redis: ConnectionManager,
    pub stream: String,
    pub dead_letter_stream: String,
}

impl DeadLetters {
    /// Every dead letter, oldest first.
    pub async fn list(&self) -> redis::RedisResult<Vec<DeadLetter>> {
        let mut redis = self.redis.clone();
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.dead_letter_stream)
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|entry| {
                let text = |value: &Value| match value {
                    Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    _ => String::new(),
                };
                let mut letter = DeadLetter {
                    id: entry.id,
                    source_id: String::new(),
                    reason: String::new(),
                    fields: BTreeMap::new(),
                };
                for (name, value) in &entry.map {
                    match name.as_str() {
                        SOURCE_ID => letter.source_id = text(value),
                        REASON => letter.reason = text(value),
                        _ => {
                            letter.fields.insert(name.clone(), text(value));
                        }
                    }
                }
                letter
            })
            .collect())
    }

    /// Appends the dead letters with these ids (all when `ids` is empty)
    /// to the event stream again and removes them from the dead-letter
    /// stream, each in one transaction; returns how many were re-driven.
    pub async fn redrive(&self, ids: &[String]) -> redis::RedisResult<usize> {
        let letters: Vec<DeadLetter> = self
            .list()
            .await?
            .into_iter()
            .filter(|letter| ids.is_empty() || ids.contains(&letter.id))
            .collect();
        let mut redis = self.redis.clone();
        for letter in &letters {
            let mut append = redis::cmd("XADD");
            append.arg(&self.stream).arg("*");
            for (name, value) in &letter.fields {
                append.arg(name).arg(value);
            }
            redis::pipe()
                .atomic()
                .add_command(append)
                .ignore()
                .cmd("XDEL")
                .arg(&self.dead_letter_stream)
                .arg(&letter.id)
                .ignore()
                .query_async::<()>(&mut redis)
                .await?;
            tracing::info!(id = %letter.id, source_id = %letter.source_id, "dead letter re-driven");
        }
        Ok(letters.len())
    }
}
