//! What the query side keeps, written by `apply` and read by `read`: the
//! books, the author summaries, the Redis cache of single books, and which
//! generation of collections is active.

pub mod authors;
pub mod books;
pub mod cache;
pub mod generation;
mod local_copy;

pub use authors::{AuthorSummaries, AuthorSummary};
pub use books::{Applied, Books, Record};
pub use cache::{BookCache, Cached};
pub use generation::{ActiveGeneration, Collections};
pub use local_copy::LocalCopy;
