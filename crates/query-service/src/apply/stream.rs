//! Every Redis command of the event stream's consumer group, behind typed
//! deliveries: reading (new entries, this consumer's pending ones, entries
//! another consumer abandoned), settling (acknowledge, dead-letter, give
//! back) and trimming what every group acknowledged.

use std::{collections::HashMap, time::Duration};

use domain::BookEvent;
use platform::{error::Failure, stream::Partitions, RedisClient, RedisConnection};
use redis::{
    streams::{
        StreamId, StreamInfoGroup, StreamInfoGroupsReply, StreamPendingCountReply, StreamReadReply,
    },
    Value,
};

use crate::metrics::{self, DeadLetterReason};

/// Trims KEYS[1] to the oldest entry any group still needs: for each group
/// the smaller of its last-delivered id and its smallest pending id. One
/// script, so no group can move in between. Returns how many entries went.
const TRIM_ACKNOWLEDGED: &str = r"
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  if am ~= bm then return am < bm end
  return as < bs
end
local keep = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local needed = info['last-delivered-id']
  local pending = redis.call('XPENDING', KEYS[1], info['name'])
  if pending[2] and older(pending[2], needed) then needed = pending[2] end
  if keep == nil or older(needed, keep) then keep = needed end
end
if keep == nil or keep == '0-0' then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', keep)
";

/// Names the server that holds KEYS[1] and its time as a master: its run
/// id and replication id. Either changes with a restart, a failover or a
/// failback, any of which may have lost what was acknowledged last.
const SERVER_ID: &str = r"
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local replication = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
return (run or '?') .. ':' .. (replication or '?')
";

/// The consumer group `group` on each of `streams` (XINFO GROUPS): `None`
/// where the stream or the group does not exist.
pub async fn groups_on(
    redis: &mut RedisConnection,
    streams: &[String],
    group: &str,
) -> redis::RedisResult<Vec<Option<StreamInfoGroup>>> {
    let mut found = Vec::with_capacity(streams.len());
    for stream in streams {
        let reply: redis::RedisResult<StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut *redis)
            .await;
        found.push(match reply {
            Ok(reply) => reply.groups.into_iter().find(|g| g.name == group),
            // No such stream.
            Err(error) if error.code() == Some("ERR") => None,
            Err(error) => return Err(error),
        });
    }
    Ok(found)
}

/// One partition of the consumer group's stream, as one consumer of the
/// group sees it.
pub struct EventStream {
    pub client: RedisClient,
    /// The partition's stream.
    pub stream: String,
    pub group: String,
    pub consumer: String,
    pub dead_letter_stream: String,
    /// Most entries per read.
    pub batch: usize,
    /// How long a read waits for new entries.
    pub block: Duration,
    pub timeout: Duration,
    /// How long an entry stays pending at another consumer before this one
    /// claims it.
    pub claim_idle: Duration,
}

/// Where the next read starts: this consumer's pending entries after an
/// id, or new entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    Pending(String),
    New,
}

impl Cursor {
    /// All of this consumer's pending entries.
    pub fn pending() -> Self {
        Cursor::Pending("0".to_owned())
    }

    fn id(&self) -> &str {
        match self {
            Cursor::Pending(id) => id,
            Cursor::New => ">",
        }
    }
}

/// One entry as delivered to this consumer.
pub struct Delivery {
    pub id: String,
    /// The event, or why the entry is not one.
    pub event: Result<BookEvent, String>,
    /// How many times the entry has been delivered, this time included.
    pub deliveries: u64,
    /// The entry's fields, copied to the dead letter.
    fields: HashMap<String, Value>,
}

impl Delivery {
    fn new(entry: StreamId, deliveries: u64) -> Self {
        let event = match entry.map.get("data") {
            Some(Value::BulkString(bytes)) => {
                BookEvent::from_json(&String::from_utf8_lossy(bytes)).map_err(|e| e.to_string())
            }
            _ => Err("entry has no data field".to_owned()),
        };
        Self {
            id: entry.id,
            event,
            deliveries,
            fields: entry.map,
        }
    }
}

/// One connected session of the consumer.
pub struct Session<'a> {
    stream: &'a EventStream,
    connection: RedisConnection,
}

impl EventStream {
    /// Connects, checks that Redis agrees with this layout of the stream's
    /// `partitions`, and creates the group (from the stream's start) if
    /// Redis does not have it; also says whether it had to.
    pub async fn connect(&self, partitions: &Partitions) -> Result<(Session<'_>, bool), Failure> {
        // A blocking read holds the connection for up to `block`.
        let mut connection = self.client.dedicated(self.timeout, self.block).await?;
        partitions.check_layout(&mut connection).await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        let created = match created {
            Ok(()) => true,
            Err(error) if error.code() == Some("BUSYGROUP") => false,
            Err(error) => return Err(error.into()),
        };
        let session = Session {
            stream: self,
            connection,
        };
        Ok((session, created))
    }
}

impl<'a> Session<'a> {
    /// The partition this session reads.
    pub fn stream(&self) -> &'a EventStream {
        self.stream
    }

    /// Up to a batch of entries from `cursor`; a read of new entries waits
    /// up to `block` for one.
    pub async fn read(&mut self, cursor: &Cursor) -> redis::RedisResult<Vec<Delivery>> {
        let stream = self.stream;
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&stream.group)
            .arg(&stream.consumer)
            .arg("COUNT")
            .arg(stream.batch);
        if *cursor == Cursor::New {
            read.arg("BLOCK").arg(stream.block.as_millis() as u64);
        }
        read.arg("STREAMS").arg(&stream.stream).arg(cursor.id());
        let reply: Option<StreamReadReply> = read.query_async(&mut self.connection).await?;
        let entries = reply
            .and_then(|r| r.keys.into_iter().next())
            .map(|k| k.ids)
            .unwrap_or_default();
        // Pending entries were delivered before: how often decides when a
        // failing one is given up.
        let counts = match cursor {
            Cursor::Pending(_) => self.delivery_counts(&entries).await?,
            Cursor::New => HashMap::new(),
        };
        Ok(entries
            .into_iter()
            .map(|entry| {
                let deliveries = counts.get(&entry.id).copied().unwrap_or(1);
                Delivery::new(entry, deliveries)
            })
            .collect())
    }

    async fn delivery_counts(
        &mut self,
        entries: &[StreamId],
    ) -> redis::RedisResult<HashMap<String, u64>> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(HashMap::new());
        };
        let reply: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.stream.stream)
            .arg(&self.stream.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(entries.len())
            .arg(&self.stream.consumer)
            .query_async(&mut self.connection)
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|pending| (pending.id, pending.times_delivered as u64))
            .collect())
    }

    /// Claims the entries other consumers left pending for longer than
    /// `claim_idle` (a replica that died); returns how many.
    pub async fn claim_abandoned(&mut self) -> redis::RedisResult<usize> {
        let stream = self.stream;
        let mut start = "0-0".to_owned();
        let mut claimed = 0;
        loop {
            // [next start, [claimed ids]] and, since Redis 7, [deleted ids]
            let reply: Vec<Value> = redis::cmd("XAUTOCLAIM")
                .arg(&stream.stream)
                .arg(&stream.group)
                .arg(&stream.consumer)
                .arg(stream.claim_idle.as_millis() as u64)
                .arg(&start)
                .arg("COUNT")
                .arg(stream.batch)
                .arg("JUSTID")
                .query_async(&mut self.connection)
                .await?;
            let mut reply = reply.into_iter();
            let (Some(next), Some(ids)) = (reply.next(), reply.next()) else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "unexpected XAUTOCLAIM reply",
                )));
            };
            let next: String = redis::from_redis_value(next)?;
            let ids: Vec<String> = redis::from_redis_value(ids)?;
            claimed += ids.len();
            if next == "0-0" {
                return Ok(claimed);
            }
            start = next;
        }
    }

    /// The run and replication ids of the Redis server that holds the
    /// partition now.
    pub async fn server_id(&mut self) -> redis::RedisResult<String> {
        redis::cmd("EVAL")
            .arg(SERVER_ID)
            .arg(1)
            .arg(&self.stream.stream)
            .query_async(&mut self.connection)
            .await
    }

    /// Removes every entry every group has acknowledged.
    pub async fn trim(&mut self) -> redis::RedisResult<u64> {
        redis::cmd("EVAL")
            .arg(TRIM_ACKNOWLEDGED)
            .arg(1)
            .arg(&self.stream.stream)
            .query_async(&mut self.connection)
            .await
    }

    /// Settles a batch in one atomic pipeline, so an entry is never
    /// acknowledged without its dead-letter copy.
    pub async fn settle(&mut self, settlements: Settlements<'_>) -> redis::RedisResult<()> {
        if settlements.commands > 0 {
            settlements
                .pipe
                .query_async::<()>(&mut self.connection)
                .await?;
        }
        // Counted once Redis took them: after a failure they are still
        // pending, and are dead-lettered (and counted) next time.
        for reason in settlements.dead_lettered {
            metrics::event_dead_lettered(reason);
        }
        Ok(())
    }
}

/// What becomes of each delivery of a batch; entries not named here stay
/// pending and are read again.
pub struct Settlements<'a> {
    stream: &'a EventStream,
    pipe: redis::Pipeline,
    commands: usize,
    dead_lettered: Vec<DeadLetterReason>,
}

impl<'a> Settlements<'a> {
    pub fn new(stream: &'a EventStream) -> Self {
        let mut pipe = redis::pipe();
        pipe.atomic();
        Self {
            stream,
            pipe,
            commands: 0,
            dead_lettered: Vec::new(),
        }
    }

    /// Done with: XACK.
    pub fn ack(&mut self, delivery: &Delivery) {
        self.pipe
            .cmd("XACK")
            .arg(&self.stream.stream)
            .arg(&self.stream.group)
            .arg(&delivery.id)
            .ignore();
        self.commands += 1;
    }

    /// Copied to the dead-letter stream with `reason`, then acknowledged.
    pub fn dead_letter(&mut self, delivery: &Delivery, category: DeadLetterReason, reason: &str) {
        let mut add = redis::cmd("XADD");
        add.arg(&self.stream.dead_letter_stream)
            .arg("*")
            .arg("sourceId")
            .arg(&delivery.id)
            .arg("reason")
            .arg(reason);
        for (name, value) in &delivery.fields {
            if let Value::BulkString(bytes) = value {
                add.arg(name).arg(bytes.as_slice());
            }
        }
        self.pipe.add_command(add).ignore();
        self.dead_lettered.push(category);
        self.ack(delivery);
    }

    /// Left pending, with this delivery not counted: a wait for MongoDB or
    /// Redis is not a failure of the event.
    pub fn give_back(&mut self, delivery: &Delivery) {
        self.pipe
            .cmd("XCLAIM")
            .arg(&self.stream.stream)
            .arg(&self.stream.group)
            .arg(&self.stream.consumer)
            .arg(0)
            .arg(&delivery.id)
            .arg("RETRYCOUNT")
            .arg(delivery.deliveries.saturating_sub(1))
            .arg("JUSTID")
            .ignore();
        self.commands += 1;
    }
}
