//! The dead-letter streams (one per partition of the event stream), for
//! operators: what is there and why, and a re-drive that appends entries
//! to their partition again once their cause is fixed
//! (`query-service dead-letters`, `query-service redrive`).

use std::collections::BTreeMap;

use platform::{stream::Partitions, RedisConnection};
use redis::{streams::StreamRangeReply, Value};
use serde::Serialize;

/// Fields the consumer adds to a dead letter; the others are the original
/// entry's.
const SOURCE_ID: &str = "sourceId";
const REASON: &str = "reason";

/// One dead letter.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Its id in its partition's dead-letter stream.
    pub id: String,
    /// The partition of the event stream it came from.
    pub partition: usize,
    /// The id the entry had in the event stream.
    pub source_id: String,
    /// Why it was given up.
    pub reason: String,
    /// The original entry's fields (`type` and `data` for an event).
    pub fields: BTreeMap<String, String>,
}

pub struct DeadLetters {
    pub redis: RedisConnection,
    pub partitions: Partitions,
    /// The dead-letter stream's name, before each partition's tag.
    pub dead_letter_stream: String,
}

impl DeadLetters {
    /// Every dead letter, oldest first in each partition.
    pub async fn list(&self) -> redis::RedisResult<Vec<DeadLetter>> {
        let mut letters = Vec::new();
        for partition in 0..self.partitions.count() {
            letters.extend(self.list_partition(partition).await?);
        }
        Ok(letters)
    }

    async fn list_partition(&self, partition: usize) -> redis::RedisResult<Vec<DeadLetter>> {
        let mut redis = self.redis.clone();
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.partitions.key(&self.dead_letter_stream, partition))
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
                    partition,
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
    /// to their partition of the event stream again and removes them from
    /// the dead-letter stream, each atomically and only if this call
    /// removed it (so two concurrent re-drives do not append one letter
    /// twice); returns how many were re-driven. Unknown ids are an error, before anything moves.
    pub async fn redrive(&self, ids: &[String]) -> anyhow::Result<usize> {
        let letters = self.list().await?;
        let unknown: Vec<&String> = ids
            .iter()
            .filter(|id| !letters.iter().any(|letter| letter.id == **id))
            .collect();
        anyhow::ensure!(unknown.is_empty(), "no dead letter with id(s) {unknown:?}");
        let mut redis = self.redis.clone();
        let mut redriven = 0;
        for letter in letters
            .iter()
            .filter(|letter| ids.is_empty() || ids.contains(&letter.id))
        {
            if letter.fields.is_empty() {
                tracing::warn!(id = %letter.id, "dead letter has no fields to re-drive; left in place");
                continue;
            }
            let mut move_back = redis::cmd("EVAL");
            move_back
                .arg(MOVE_BACK)
                .arg(2)
                .arg(
                    self.partitions
                        .key(&self.dead_letter_stream, letter.partition),
                )
                .arg(self.partitions.stream(letter.partition))
                .arg(&letter.id);
            for (name, value) in &letter.fields {
                move_back.arg(name).arg(value);
            }
            let moved: i64 = move_back.query_async(&mut redis).await?;
            if moved == 1 {
                redriven += 1;
                tracing::info!(id = %letter.id, source_id = %letter.source_id, "dead letter re-driven");
            }
        }
        Ok(redriven)
    }
}

/// Deletes ARGV[1] from KEYS[1] and, only if it was there, appends the
/// fields ARGV[2..] to KEYS[2].
const MOVE_BACK: &str = r"
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
  return 1
end
return 0
";
