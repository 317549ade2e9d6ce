//! What `GET /books` asks the read model for: filters, a total order, and
//! the keyset cursor that lets a client page through that order without
//! skipping or repeating a book while others are added.
//!
//! Pure logic (validation, cursor encoding, the MongoDB filter and sort
//! documents); `Books::list` runs the query.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use domain::{Author, Book, PublishedYear, Title};
use platform::Problem;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Books per page when the client does not say.
pub const DEFAULT_LIMIT: u32 = 20;
/// Most books per page; larger limits are lowered to this.
pub const MAX_LIMIT: u32 = 100;

/// The field a list is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    CreatedAt,
    Title,
    PublishedYear,
}

impl SortKey {
    fn field(self) -> &'static str {
        match self {
            SortKey::CreatedAt => "createdAt",
            SortKey::Title => "title",
            SortKey::PublishedYear => "publishedYear",
        }
    }
}

/// A total order: the key, then `_id` in the same direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

impl Default for Sort {
    fn default() -> Self {
        Self {
            key: SortKey::CreatedAt,
            descending: false,
        }
    }
}

impl Sort {
    /// The parameter's spelling: `title`, `-title`...
    pub fn as_param(self) -> String {
        let sign = if self.descending { "-" } else { "" };
        format!("{sign}{}", self.key.field())
    }

    /// The sort document; `_id` breaks ties so the order is total.
    pub fn document(self) -> Document {
        let direction = if self.descending { -1 } else { 1 };
        doc! { self.key.field(): direction, "_id": direction }
    }
}

/// The filters of a list, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BookFilter {
    /// `Author::key()` of the author asked for.
    pub author_key: Option<String>,
    pub year: Option<i32>,
    pub year_from: Option<i32>,
    pub year_to: Option<i32>,
    /// Text the title contains, ignoring case.
    pub title: Option<String>,
}

/// The filter parameters as sent, before validation.
#[derive(Debug, Default)]
pub struct RawFilter<'a> {
    pub author: Option<&'a str>,
    pub year: Option<i64>,
    pub year_from: Option<i64>,
    pub year_to: Option<i64>,
    pub title: Option<&'a str>,
}

impl BookFilter {
    /// Validates each parameter with the domain's own rules; a 400 names
    /// the first one at fault.
    pub fn parse(raw: &RawFilter<'_>) -> Result<Self, Problem> {
        let year = |name: &str, value: Option<i64>| {
            value
                .map(|v| {
                    PublishedYear::parse(v)
                        .map(PublishedYear::value)
                        .map_err(|e| Problem::invalid_parameter(name, e.rule.as_str(), e.message))
                })
                .transpose()
        };
        let author_key = raw
            .author
            .map(|a| {
                Author::parse(a)
                    .map(|a| a.key())
                    .map_err(|e| Problem::invalid_parameter("author", e.rule.as_str(), e.message))
            })
            .transpose()?;
        let title = raw
            .title
            .map(|t| {
                Title::parse(t)
                    .map(|t| t.as_str().to_owned())
                    .map_err(|e| Problem::invalid_parameter("title", e.rule.as_str(), e.message))
            })
            .transpose()?;
        let filter = Self {
            author_key,
            year: year("year", raw.year)?,
            year_from: year("yearFrom", raw.year_from)?,
            year_to: year("yearTo", raw.year_to)?,
            title,
        };
        if let (Some(from), Some(to)) = (filter.year_from, filter.year_to) {
            if from > to {
                return Err(Problem::invalid_parameter(
                    "yearFrom",
                    "range",
                    format!("must not be after yearTo ({from} > {to})"),
                ));
            }
        }
        Ok(filter)
    }

    /// The MongoDB filter: live books matching every filter given.
    pub fn document(&self) -> Document {
        let mut filter = doc! { "deleted": false };
        if let Some(key) = &self.author_key {
            filter.insert("authorKey", key.as_str());
        }
        let mut year = Document::new();
        if let Some(y) = self.year {
            year.insert("$eq", y);
        }
        if let Some(from) = self.year_from {
            year.insert("$gte", from);
        }
        if let Some(to) = self.year_to {
            year.insert("$lte", to);
        }
        if !year.is_empty() {
            filter.insert("publishedYear", year);
        }
        if let Some(title) = &self.title {
            filter.insert(
                "title",
                doc! { "$regex": escape_regex(title), "$options": "i" },
            );
        }
        filter
    }

    /// A short digest of the filters, carried by cursors so that a cursor
    /// is only ever used with the filters it was made for. Stable across
    /// builds and replicas (unlike `std`'s hasher).
    fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        let field = |hasher: &mut Sha256, name: &str, value: Option<String>| {
            hasher.update(name.as_bytes());
            match value {
                Some(v) => {
                    hasher.update(b"=");
                    hasher.update(v.len().to_be_bytes());
                    hasher.update(v.as_bytes());
                }
                None => hasher.update(b"-"),
            }
        };
        field(&mut hasher, "author", self.author_key.clone());
        field(&mut hasher, "year", self.year.map(|y| y.to_string()));
        field(
            &mut hasher,
            "yearFrom",
            self.year_from.map(|y| y.to_string()),
        );
        field(&mut hasher, "yearTo", self.year_to.map(|y| y.to_string()));
        field(&mut hasher, "title", self.title.clone());
        URL_SAFE_NO_PAD.encode(&hasher.finalize()[..12])
    }
}

/// The input as a regular expression that matches it literally: every
/// metacharacter escaped (both PCRE, MongoDB's engine, and Go's, FerretDB's,
/// read a backslash before punctuation as the character itself).
pub fn escape_regex(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The sort key of the last book of a page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum SortValue {
    /// `createdAt` in milliseconds, or `publishedYear`.
    Number(i64),
    Text(String),
}

/// Where the next page starts: after this book in the list's order.
#[derive(Debug, Clone, PartialEq)]
pub struct After {
    value: Bson,
    id: ObjectId,
}

impl After {
    /// The keyset condition: strictly after this position in `sort`'s
    /// order, ties on the key broken by `_id`.
    pub fn document(&self, sort: Sort) -> Document {
        let field = sort.key.field();
        let op = if sort.descending { "$lt" } else { "$gt" };
        doc! {
            "$or": [
                { field: { op: self.value.clone() } },
                { field: self.value.clone(), "_id": { op: self.id } },
            ]
        }
    }
}

/// What a cursor carries, as JSON (then base64url).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorData {
    /// The sort, as its parameter.
    s: String,
    /// The sort key of the last book of the page.
    v: SortValue,
    /// The `_id` of that book.
    id: String,
    /// The filters' fingerprint.
    f: String,
}

/// The opaque cursor of the page after `last`.
pub fn next_cursor(sort: Sort, filter: &BookFilter, last: &Book) -> String {
    let v = match sort.key {
        SortKey::CreatedAt => SortValue::Number(last.state.created_at.timestamp_millis()),
        SortKey::Title => SortValue::Text(last.state.title.as_str().to_owned()),
        SortKey::PublishedYear => SortValue::Number(i64::from(last.state.published_year.value())),
    };
    let data = CursorData {
        s: sort.as_param(),
        v,
        id: last.id.as_str().to_owned(),
        f: filter.fingerprint(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&data).expect("a cursor serializes"))
}

/// Reads a cursor made by `next_cursor` for this sort and these filters;
/// a 400 naming `cursor` otherwise (`format` when it is not one of ours,
/// `mismatch` when it belongs to another sort or other filters).
pub fn parse_cursor(raw: &str, sort: Sort, filter: &BookFilter) -> Result<After, Problem> {
    let format = || {
        Problem::invalid_parameter(
            "cursor",
            "format",
            "is not a cursor this service returned; start again without a cursor",
        )
    };
    let mismatch = |what: &str| {
        Problem::invalid_parameter(
            "cursor",
            "mismatch",
            format!("was made for another {what}; send the same parameters as for the first page"),
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| format())?;
    let data: CursorData = serde_json::from_slice(&bytes).map_err(|_| format())?;
    let id = ObjectId::parse_str(&data.id).map_err(|_| format())?;
    if data.s != sort.as_param() {
        return Err(mismatch("sort"));
    }
    if data.f != filter.fingerprint() {
        return Err(mismatch("set of filters"));
    }
    let value = match (sort.key, data.v) {
        (SortKey::CreatedAt, SortValue::Number(ms)) => Bson::DateTime(DateTime::from_millis(ms)),
        (SortKey::PublishedYear, SortValue::Number(y)) => {
            Bson::Int32(i32::try_from(y).map_err(|_| format())?)
        }
        (SortKey::Title, SortValue::Text(t)) => Bson::String(t),
        _ => return Err(format()),
    };
    Ok(After { value, id })
}

/// The page size: the default when absent, lowered to `MAX_LIMIT`; a 400
/// below 1.
pub fn limit(raw: Option<i64>) -> Result<u32, Problem> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if n < 1 => Err(Problem::invalid_parameter(
            "limit",
            "outOfRange",
            format!("must be at least 1, got {n}"),
        )),
        Some(n) => Ok(u32::try_from(n.min(i64::from(MAX_LIMIT))).unwrap_or(MAX_LIMIT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{BookDraft, BookId};

    fn book(title: &str, year: i64) -> Book {
        let draft = BookDraft::parse(title, "Frank Herbert", year).unwrap();
        Book::create(
            BookId::parse("65a1b2c3d4e5f60718293a4b").unwrap(),
            draft,
            "2024-05-01T10:00:00.123Z".parse().unwrap(),
        )
    }

    fn rule(problem: &Problem) -> (&str, &str) {
        let error = &problem.errors()[0];
        (error.field.as_str(), error.rule.as_str())
    }

    #[test]
    fn a_cursor_round_trips_for_the_same_sort_and_filters() {
        let filter = BookFilter {
            title: Some("dune".into()),
            ..Default::default()
        };
        for (key, value) in [
            (
                SortKey::CreatedAt,
                Bson::DateTime(DateTime::from_millis(1_714_557_600_123)),
            ),
            (SortKey::Title, Bson::String("Dune".into())),
            (SortKey::PublishedYear, Bson::Int32(1965)),
        ] {
            for descending in [false, true] {
                let sort = Sort { key, descending };
                let cursor = next_cursor(sort, &filter, &book("Dune", 1965));
                let after = parse_cursor(&cursor, sort, &filter).unwrap();
                assert_eq!(after.value, value);
                assert_eq!(after.id.to_hex(), "65a1b2c3d4e5f60718293a4b");
            }
        }
    }

    #[test]
    fn a_cursor_of_another_sort_or_other_filters_is_a_mismatch() {
        let filter = BookFilter::default();
        let cursor = next_cursor(Sort::default(), &filter, &book("Dune", 1965));
        let descending = Sort {
            descending: true,
            ..Sort::default()
        };
        let problem = parse_cursor(&cursor, descending, &filter).unwrap_err();
        assert_eq!(rule(&problem), ("cursor", "mismatch"));
        let other = BookFilter {
            year: Some(1965),
            ..Default::default()
        };
        let problem = parse_cursor(&cursor, Sort::default(), &other).unwrap_err();
        assert_eq!(rule(&problem), ("cursor", "mismatch"));
    }

    #[test]
    fn garbage_is_not_a_cursor() {
        let fingerprint = BookFilter::default().fingerprint();
        let wrong_value = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"s":"createdAt","v":"x","id":"65a1b2c3d4e5f60718293a4b","f":"{fingerprint}"}}"#
        ));
        for raw in [
            "",
            "!!!",
            "bm90IGpzb24",
            &URL_SAFE_NO_PAD.encode(b"{}"),
            &wrong_value,
        ] {
            let problem = parse_cursor(raw, Sort::default(), &BookFilter::default()).unwrap_err();
            assert_eq!(rule(&problem).1, "format", "{raw:?}");
        }
    }

    #[test]
    fn filters_that_differ_have_different_fingerprints() {
        let a = BookFilter {
            author_key: Some("ab".into()),
            title: Some("c".into()),
            ..Default::default()
        };
        let b = BookFilter {
            author_key: Some("a".into()),
            title: Some("bc".into()),
            ..Default::default()
        };
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }

    #[test]
    fn parameters_are_validated_with_the_domain_rules() {
        let parse = |raw: RawFilter<'_>| BookFilter::parse(&raw).unwrap_err();
        let p = parse(RawFilter {
            author: Some("  "),
            ..Default::default()
        });
        assert_eq!(rule(&p), ("author", "required"));
        let p = parse(RawFilter {
            year_to: Some(3000),
            ..Default::default()
        });
        assert_eq!(rule(&p), ("yearTo", "outOfRange"));
        let p = parse(RawFilter {
            year_from: Some(2000),
            year_to: Some(1999),
            ..Default::default()
        });
        assert_eq!(rule(&p), ("yearFrom", "range"));
        let ok = BookFilter::parse(&RawFilter {
            author: Some(" Ursula K. LE GUIN "),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ok.author_key.as_deref(), Some("ursula k. le guin"));
    }

    #[test]
    fn limit_defaults_caps_and_refuses_zero() {
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some(5)).unwrap(), 5);
        assert_eq!(limit(Some(100_000)).unwrap(), MAX_LIMIT);
        assert_eq!(rule(&limit(Some(0)).unwrap_err()), ("limit", "outOfRange"));
    }

    #[test]
    fn regex_metacharacters_match_literally() {
        assert_eq!(escape_regex("a.b*(c)"), r"a\.b\*\(c\)");
        assert_eq!(escape_regex("C++ [2nd ed.]"), r"C\+\+ \[2nd ed\.\]");
        assert_eq!(escape_regex("Émile"), "Émile");
    }

    #[test]
    fn the_keyset_condition_follows_the_direction() {
        let after = After {
            value: Bson::Int32(1965),
            id: ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap(),
        };
        let sort = Sort {
            key: SortKey::PublishedYear,
            descending: true,
        };
        assert_eq!(
            after.document(sort),
            doc! { "$or": [
                { "publishedYear": { "$lt": 1965 } },
                { "publishedYear": 1965, "_id": { "$lt": after.id } },
            ] }
        );
        assert_eq!(sort.document(), doc! { "publishedYear": -1, "_id": -1 });
    }
}
