//! Properties of parsing and event decoding over arbitrary input: nothing
//! panics, whatever parses is valid and parses again to itself, and every
//! valid book's events survive their JSON.

use chrono::{DateTime, TimeZone, Utc};
use domain::{Author, Book, BookDraft, BookEvent, BookId, PublishedYear, Title};
use proptest::prelude::*;

/// Checks what `Title::parse` or `Author::parse` accepted.
fn assert_valid_text(parsed: &str, raw: &str, max: usize) {
    assert_eq!(parsed, raw.trim());
    let len = parsed.chars().count();
    assert!((1..=max).contains(&len), "{len} characters");
    assert!(!parsed.chars().any(char::is_control));
}

fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    // Milliseconds, as stored; 1970 to 2100.
    (0_i64..4_102_444_800_000).prop_map(|ms| Utc.timestamp_millis_opt(ms).unwrap())
}

prop_compose! {
    fn valid_book()(
        id in "[0-9a-f]{24}",
        title in "[^\\p{Cc}]{1,200}",
        author in "[^\\p{Cc}]{1,100}",
        year in PublishedYear::MIN..=PublishedYear::MAX,
        created in timestamp(),
        version in 1_u64..1_000_000,
    ) -> Option<Book> {
        let draft = BookDraft::parse(&title, &author, i64::from(year)).ok()?;
        let mut book = Book::create(BookId::parse(&id).unwrap(), draft, created);
        book.version = version;
        Some(book)
    }
}

proptest! {
    #[test]
    fn a_title_is_accepted_only_when_valid(raw in any::<String>()) {
        if let Ok(title) = Title::parse(&raw) {
            assert_valid_text(title.as_str(), &raw, Title::MAX_CHARS);
            prop_assert_eq!(Title::parse(title.as_str()), Ok(title.clone()));
        }
    }

    #[test]
    fn an_author_is_accepted_only_when_valid(raw in any::<String>()) {
        if let Ok(author) = Author::parse(&raw) {
            assert_valid_text(author.as_str(), &raw, Author::MAX_CHARS);
            prop_assert_eq!(author.key(), author.as_str().to_lowercase());
        }
    }

    #[test]
    fn a_year_is_accepted_exactly_in_range(raw in any::<i64>()) {
        let in_range = (i64::from(PublishedYear::MIN)..=i64::from(PublishedYear::MAX)).contains(&raw);
        prop_assert_eq!(PublishedYear::parse(raw).is_ok(), in_range);
    }

    #[test]
    fn an_id_is_accepted_exactly_when_24_hex_digits(raw in "[0-9a-fA-Fg-z]{0,30}") {
        let hex = raw.len() == 24 && raw.bytes().all(|b| b.is_ascii_hexdigit());
        let parsed = BookId::parse(&raw);
        prop_assert_eq!(parsed.is_ok(), hex);
        if let Ok(id) = parsed {
            prop_assert_eq!(id.as_str(), raw.to_ascii_lowercase());
        }
    }

    #[test]
    fn decoding_arbitrary_text_never_panics(raw in any::<String>()) {
        let _ = BookEvent::from_json(&raw);
    }

    #[test]
    fn decoding_arbitrary_json_objects_never_panics(
        value in proptest::collection::hash_map("[a-zA-Z]{1,12}", any::<i64>(), 0..8)
    ) {
        let raw = serde_json::to_string(&value).unwrap();
        let _ = BookEvent::from_json(&raw);
    }

    #[test]
    fn every_event_of_a_valid_book_round_trips(book in valid_book()) {
        if let Some(book) = book {
            for event in [
                BookEvent::created(&book, None),
                BookEvent::updated(&book, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into())),
                BookEvent::deleted(&book.id, book.version, book.state.updated_at, None),
            ] {
                prop_assert_eq!(BookEvent::from_json(&event.to_json()).unwrap(), event);
            }
        }
    }
}
