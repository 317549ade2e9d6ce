//! The event stream: its partitions (the stream keys, and which one a book's
//! events go to) and its entry format, written by the relay and by
//! reconciliation alike: `type` (the event type) and `data` (the event's
//! JSON).

use redis::aio::ConnectionLike;

use crate::error::Failure;

/// Most partitions: each is a stream every query-service replica reads.
pub const MAX_PARTITIONS: usize = 1024;
/// Redis Cluster's key slots.
const SLOTS: usize = 16_384;

/// The stream's partitions. A book's events all go to one partition, so
/// they stay in order; one partition on one Redis server is the stream key
/// itself. Otherwise each key ends in a hash tag, `<name>:{<tag>}`, which
/// also puts a partition's dead letters in its slot, and the tags are
/// chosen so that the partitions spread evenly over the slots, hence over
/// a cluster's masters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    stream: String,
    /// One per partition; `None` for the untagged stream.
    tags: Vec<Option<String>>,
}

impl Partitions {
    /// `count` partitions of `stream` (`EVENTS_PARTITIONS`, `EVENTS_STREAM`),
    /// tagged when there are several or when Redis is a cluster.
    pub fn new(stream: &str, count: usize, cluster: bool) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=MAX_PARTITIONS).contains(&count),
            "EVENTS_PARTITIONS must be from 1 to {MAX_PARTITIONS}, not {count}"
        );
        let tags = if count == 1 && !cluster {
            vec![None]
        } else {
            (0..count)
                .map(|index| Some(spread_tag(index, count)))
                .collect()
        };
        let partitions = Self {
            stream: stream.to_owned(),
            tags,
        };
        partitions.check_name(stream)?;
        Ok(partitions)
    }

    /// Fails if keys derived from `name` would not carry the partitions'
    /// hash tags (a name with a `{` of its own).
    pub fn check_name(&self, name: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.tags[0].is_none() || !name.contains('{'),
            "stream name {name:?} may not contain '{{' with several partitions or on a Redis Cluster: the partitions' hash tags must decide the slots"
        );
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.tags.len()
    }

    /// The partition of book `book_id`: CRC16 of the id modulo the count.
    pub fn of(&self, book_id: &str) -> usize {
        usize::from(slot(book_id.as_bytes())) % self.tags.len()
    }

    /// The stream key of partition `index`.
    pub fn stream(&self, index: usize) -> String {
        self.key(&self.stream, index)
    }

    /// The stream key that book `book_id`'s events go to.
    pub fn stream_of(&self, book_id: &str) -> String {
        self.stream(self.of(book_id))
    }

    /// Every partition's stream key.
    pub fn streams(&self) -> Vec<String> {
        self.keys(&self.stream)
    }

    /// The key of partition `index` of another per-partition key, such as
    /// the dead letters: `base`, tagged like the stream.
    pub fn key(&self, base: &str, index: usize) -> String {
        match &self.tags[index] {
            None => base.to_owned(),
            Some(tag) => format!("{base}:{{{tag}}}"),
        }
    }

    /// `base`'s key for every partition.
    pub fn keys(&self, base: &str) -> Vec<String> {
        (0..self.count())
            .map(|index| self.key(base, index))
            .collect()
    }

    /// What decides the partitions' keys: what every service of the stream
    /// must agree on.
    fn layout(&self) -> String {
        format!(
            "partitions={} tagged={}",
            self.count(),
            self.tags[0].is_some()
        )
    }

    /// Records this layout in Redis (`<stream>:layout`) unless one is, and
    /// fails if another one is: services splitting the stream otherwise
    /// would write events where no one reads them. To change the layout,
    /// drain the stream and delete the key (see docs/DEPLOYMENT.md).
    pub async fn check_layout(&self, redis: &mut impl ConnectionLike) -> Result<(), Failure> {
        let key = format!("{}:layout", self.stream);
        let recorded: String = redis::cmd("EVAL")
            .arg(RECORD_LAYOUT)
            .arg(1)
            .arg(&key)
            .arg(self.layout())
            .query_async(redis)
            .await?;
        if recorded == self.layout() {
            return Ok(());
        }
        Err(Failure::Permanent(anyhow::anyhow!(
            "the stream {} is laid out as `{recorded}` (key {key}), this service as `{}`: both services need the same EVENTS_PARTITIONS and the same kind of Redis",
            self.stream,
            self.layout()
        )))
    }
}

/// Sets KEYS[1] to ARGV[1] unless it is set; returns what it holds.
const RECORD_LAYOUT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
";

/// The Redis Cluster slot of `key`: CRC16 of its hash tag (the text between
/// the first `{` and the next `}`, when not empty) or of the whole key.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    let hashed = tagged.unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS as u16
}

/// A hash tag for partition `index` of `count` whose slot lies in the
/// middle half of the `index`-th of `count` equal parts of the slots.
fn spread_tag(index: usize, count: usize) -> String {
    let width = SLOTS / count;
    let (low, high) = (index * width + width / 4, index * width + width * 3 / 4);
    (0u32..)
        .map(|n| format!("{index}.{n}"))
        .find(|tag| (low..=high).contains(&usize::from(slot(tag.as_bytes()))))
        .expect("some tag lands in every part of the slots")
}

/// Queues on `pipe` the XADD of one event to `stream`.
pub fn append(pipe: &mut redis::Pipeline, stream: &str, event_type: &str, json: &str) {
    pipe.cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("type")
        .arg(event_type)
        .arg("data")
        .arg(json)
        .ignore();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_partition_on_one_server_is_the_stream_itself() {
        let partitions = Partitions::new("books:events", 1, false).unwrap();
        assert_eq!(partitions.streams(), ["books:events"]);
        assert_eq!(partitions.key("books:events:dead", 0), "books:events:dead");
        assert_eq!(partitions.of("65f0c0ffee0000000000abcd"), 0);
    }

    #[test]
    fn a_partition_and_its_dead_letters_share_a_slot() {
        let partitions = Partitions::new("books:events", 4, false).unwrap();
        for index in 0..4 {
            let stream = partitions.stream(index);
            let dead = partitions.key("books:events:dead", index);
            assert!(stream.starts_with("books:events:{"), "{stream}");
            assert_eq!(slot(stream.as_bytes()), slot(dead.as_bytes()));
        }
    }

    #[test]
    fn partitions_spread_over_the_masters_of_an_evenly_split_cluster() {
        // Three masters own 0-5460, 5461-10922 and 10923-16383.
        let master = |slot: u16| usize::from(slot) * 3 / SLOTS;
        let partitions = Partitions::new("books:events", 3, true).unwrap();
        let masters: Vec<usize> = partitions
            .streams()
            .iter()
            .map(|stream| master(slot(stream.as_bytes())))
            .collect();
        assert_eq!(masters, [0, 1, 2]);
        // On a cluster, one partition is tagged too.
        let one = Partitions::new("books:events", 1, true).unwrap();
        assert!(one.stream(0).ends_with('}'));
    }

    #[test]
    fn a_book_always_goes_to_the_same_partition_and_books_spread() {
        let partitions = Partitions::new("s", 4, false).unwrap();
        let mut counts = [0; 4];
        for n in 0..4000u32 {
            let id = format!("65f0c0ffee{n:014x}");
            assert_eq!(partitions.of(&id), partitions.of(&id.clone()));
            counts[partitions.of(&id)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn slots_are_those_redis_computes() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"somekey"), 11058);
        // An empty tag is no tag: the whole key is hashed.
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"123456789"), 12739);
    }

    #[test]
    fn counts_out_of_range_and_braced_names_are_refused() {
        assert!(Partitions::new("s", 0, false).is_err());
        assert!(Partitions::new("s", MAX_PARTITIONS + 1, false).is_err());
        assert!(Partitions::new("{s}", 2, false).is_err());
        assert!(Partitions::new("{s}", 1, false).is_ok());
        let many = Partitions::new("s", MAX_PARTITIONS, true).unwrap();
        assert_eq!(many.count(), MAX_PARTITIONS);
    }
}
