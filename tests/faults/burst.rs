//! The burst: concurrent clients sending a fixed number of mixed writes to
//! the command services (creates, PUTs and PATCHes of known books, deletes;
//! roughly 40/40/20, each change with `If-Match` half of the time, one in
//! ten giving the book another author), and recording the outcome of each:
//! acknowledged (2xx, with its version), rejected (the status), or failed
//! (no answer). A client whose replica does not answer moves to the next
//! one; a write during an outage counts as attempted, not acknowledged.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::{support::Rng, system::TOKEN};

const AUTHORS: [&str; 16] = [
    "Frank Herbert",
    "Jane Austen",
    "Ursula K. Le Guin",
    "Octavia E. Butler",
    "Stanisław Lem",
    "Chinua Achebe",
    "Italo Calvino",
    "Toni Morrison",
    "Jorge Luis Borges",
    "Virginia Woolf",
    "Haruki Murakami",
    "Gabriel García Márquez",
    "Doris Lessing",
    "Naguib Mahfouz",
    "Wisława Szymborska",
    "Kazuo Ishiguro",
];
/// How often a change gives the book another author, in percent. Each
/// author a book ever had costs the projection a summary rebuild per event
/// of the book, so authors change rarely, as they do in a catalogue.
const AUTHOR_CHANGES: usize = 10;
/// Pause after a write got no answer, so that clients of a dead service do
/// not spin through the burst in a few milliseconds.
const FAILURE_PAUSE: Duration = Duration::from_millis(250);
/// Longest wait for one answer: far beyond any dependency timeout, so a
/// hang shows up as a long write rather than as a stuck suite.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Create,
    Put,
    Patch,
    Delete,
}

/// How a write ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// 2xx: the book's id and the version the answer named.
    Acknowledged { id: String, version: u64 },
    /// Any other status; whether the body was `application/problem+json`.
    Rejected { status: u16, problem: bool },
    /// No answer (refused, reset, timed out).
    Failed(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub(crate) op: Op,
    pub(crate) conditional: bool,
    pub(crate) started: Instant,
    pub(crate) elapsed: Duration,
    pub(crate) outcome: Outcome,
}

impl Write {
    /// The request, as in "PATCH with If-Match".
    pub(crate) fn request(&self) -> String {
        let method = match self.op {
            Op::Create => "POST",
            Op::Put => "PUT",
            Op::Patch => "PATCH",
            Op::Delete => "DELETE",
        };
        if self.conditional {
            format!("{method} with If-Match")
        } else {
            method.to_owned()
        }
    }

    pub(crate) fn ended(&self) -> Instant {
        self.started + self.elapsed
    }
}

/// How the burst has advanced, for the fault to fire mid-burst.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    claimed: AtomicUsize,
    finished: AtomicUsize,
}

impl Progress {
    /// Writes that have ended, whatever their outcome.
    pub(crate) fn finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Burst {
    pub(crate) total: usize,
    pub(crate) clients: usize,
    pub(crate) command_urls: Vec<String>,
}

/// A book a client knows of, with the last version and author it was
/// told of.
#[derive(Debug, Clone)]
struct Known {
    id: String,
    version: u64,
    author: String,
}

type Pool = Arc<Mutex<Vec<Known>>>;

/// What the burst did: every write, and when the last one ended.
pub(crate) struct BurstResult {
    pub(crate) writes: Vec<Write>,
    pub(crate) ended: Instant,
}

impl Burst {
    pub(crate) async fn run(self, progress: Arc<Progress>) -> anyhow::Result<BurstResult> {
        let mut headers = header::HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_str(&format!("Bearer {TOKEN}"))?,
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        // Every client changes any known book: concurrent writers of one
        // book, through every replica.
        let shared = Pool::default();
        let clients: Vec<_> = (0..self.clients)
            .map(|index| {
                let client = Client {
                    index,
                    http: http.clone(),
                    urls: self.command_urls.clone(),
                    target: index % self.command_urls.len(),
                    pool: shared.clone(),
                    rng: Rng::new(index as u64 + 1),
                    total: self.total,
                    progress: progress.clone(),
                    serial: 0,
                };
                tokio::spawn(client.run())
            })
            .collect();
        let mut writes = Vec::with_capacity(self.total);
        for client in clients {
            writes.extend(client.await?);
        }
        writes.sort_by_key(|w| w.started);
        Ok(BurstResult {
            writes,
            ended: Instant::now(),
        })
    }
}

struct Client {
    index: usize,
    http: reqwest::Client,
    urls: Vec<String>,
    /// Which of `urls` this client writes to now.
    target: usize,
    pool: Pool,
    rng: Rng,
    total: usize,
    progress: Arc<Progress>,
    serial: usize,
}

/// One request to send.
struct Request {
    op: Op,
    method: Method,
    path: String,
    if_match: Option<u64>,
    body: Option<(&'static str, Value)>,
    /// The book changed, taken out of the pool while the write is in
    /// flight when it is a delete.
    book: Option<Known>,
}

impl Client {
    async fn run(mut self) -> Vec<Write> {
        let mut writes = Vec::new();
        while self.progress.claimed.fetch_add(1, Ordering::SeqCst) < self.total {
            let request = self.next_request();
            let op = request.op;
            let conditional = request.if_match.is_some();
            let started = Instant::now();
            let outcome = self.send(request).await;
            let elapsed = started.elapsed();
            let failed = matches!(outcome, Outcome::Failed(_));
            writes.push(Write {
                op,
                conditional,
                started,
                elapsed,
                outcome,
            });
            self.progress.finished.fetch_add(1, Ordering::SeqCst);
            if failed {
                // The replica may be dead: try the next one after a pause.
                self.target = (self.target + 1) % self.urls.len();
                tokio::time::sleep(FAILURE_PAUSE).await;
            }
        }
        writes
    }

    fn next_request(&mut self) -> Request {
        self.serial += 1;
        let roll = self.rng.below(100);
        let conditional = self.rng.chance(50);
        let title = format!(
            "Book {}-{} r{}",
            self.index,
            self.serial,
            self.rng.below(1000)
        );
        let author = AUTHORS[self.rng.below(AUTHORS.len())];
        let year = 1800 + self.rng.below(225) as i64;
        let picked = if roll < 40 {
            None
        } else {
            let mut pool = self.pool.lock().expect("book pool");
            if pool.is_empty() {
                None
            } else {
                let at = self.rng.below(pool.len());
                // A book being deleted leaves the pool so that no other
                // write picks it meanwhile.
                Some(if roll >= 80 {
                    pool.swap_remove(at)
                } else {
                    pool[at].clone()
                })
            }
        };
        let Some(book) = picked else {
            return Request {
                op: Op::Create,
                method: Method::POST,
                path: "/books".to_owned(),
                if_match: None,
                body: Some((
                    "application/json",
                    json!({ "title": title, "author": author, "publishedYear": year }),
                )),
                book: None,
            };
        };
        let path = format!("/books/{}", book.id);
        let if_match = conditional.then_some(book.version);
        let new_author = self.rng.chance(AUTHOR_CHANGES);
        let (op, method, body) = if roll >= 80 {
            (Op::Delete, Method::DELETE, None)
        } else if roll < 60 {
            let author = if new_author { author } else { &book.author };
            let body = json!({ "title": title, "author": author, "publishedYear": year });
            (Op::Put, Method::PUT, Some(("application/json", body)))
        } else {
            let body = match (new_author, self.rng.below(2)) {
                (true, _) => json!({ "author": author }),
                (false, 0) => json!({ "title": title }),
                (false, _) => json!({ "publishedYear": year, "title": title }),
            };
            (
                Op::Patch,
                Method::PATCH,
                Some(("application/merge-patch+json", body)),
            )
        };
        Request {
            op,
            method,
            path,
            if_match,
            body,
            book: Some(book),
        }
    }

    async fn send(&mut self, request: Request) -> Outcome {
        let url = format!("{}{}", self.urls[self.target], request.path);
        let mut builder = self.http.request(request.method.clone(), url);
        if let Some(version) = request.if_match {
            builder = builder.header(header::IF_MATCH, format!("\"{version}\""));
        }
        if let Some((content_type, body)) = &request.body {
            builder = builder
                .header(header::CONTENT_TYPE, *content_type)
                .body(body.to_string());
        }
        let response = match builder.send().await {
            Ok(response) => response,
            Err(error) => {
                self.settle(&request, None);
                return Outcome::Failed(describe(&error));
            }
        };
        let status = response.status();
        let problem = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == b"application/problem+json");
        let etag = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_matches('"').parse::<u64>().ok());
        let body: Value = match response.bytes().await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Err(error) => {
                self.settle(&request, None);
                return Outcome::Failed(describe(&error));
            }
        };
        if status.is_success() {
            let id = body["_id"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| request.book.as_ref().map(|b| b.id.clone()));
            let version = body["version"].as_u64().or(etag);
            let (Some(id), Some(version)) = (id, version) else {
                return Outcome::Rejected {
                    status: status.as_u16(),
                    problem,
                };
            };
            let author = body["author"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| request.book.as_ref().map(|b| b.author.clone()))
                .unwrap_or_default();
            let known = Known {
                id: id.clone(),
                version,
                author,
            };
            self.settle(&request, Some((status, known)));
            return Outcome::Acknowledged { id, version };
        }
        let current = body["currentVersion"].as_u64();
        if let (StatusCode::PRECONDITION_FAILED, Some(book), Some(version)) =
            (status, request.book.as_ref(), current)
        {
            let known = Known {
                version,
                ..book.clone()
            };
            self.settle(&request, Some((status, known)));
        } else if status == StatusCode::NOT_FOUND {
            // Deleted by another client: forget it.
            if let Some(book) = &request.book {
                self.forget(&book.id);
            }
        } else {
            self.settle(&request, None);
        }
        Outcome::Rejected {
            status: status.as_u16(),
            problem,
        }
    }

    /// Brings the pool up to date after a write: a created book joins it, a
    /// changed one gets its new version, a deleted one stays out, and a
    /// book taken out for a delete that did not happen comes back.
    fn settle(&self, request: &Request, answer: Option<(StatusCode, Known)>) {
        let mut pool = self.pool.lock().expect("book pool");
        match (request.op, answer) {
            (Op::Delete, Some((status, _))) if status.is_success() => {}
            (Op::Delete, answer) => {
                if let Some(book) = &request.book {
                    let version = answer.map_or(book.version, |(_, known)| known.version);
                    pool.push(Known {
                        version,
                        ..book.clone()
                    });
                }
            }
            (Op::Create, Some((_, known))) => pool.push(known),
            (_, Some((_, known))) => {
                if let Some(entry) = pool.iter_mut().find(|k| k.id == known.id) {
                    if known.version >= entry.version {
                        *entry = known;
                    }
                }
            }
            (_, None) => {}
        }
    }

    fn forget(&self, id: &str) {
        self.pool.lock().expect("book pool").retain(|k| k.id != id);
    }
}

/// A short name for why a request got no answer.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".to_owned()
    } else if error.is_connect() {
        "connect".to_owned()
    } else if error.is_body() || error.is_decode() {
        "body".to_owned()
    } else {
        "request".to_owned()
    }
}
