//! Properties of parsing and event decoding over arbitrary input: nothing
//! panics, whatever parses is valid and parses again to itself, canonically
//! equivalent texts are one text, and every valid book's events survive
//! their JSON.

use chrono::{DateTime, TimeZone, Utc};
use domain::{Author, Book, BookDraft, BookEvent, BookId, PublishedYear, Title};
use proptest::prelude::*;
use unicode_normalization::{is_nfc, UnicodeNormalization};

/// Checks what `Title::parse` or `Author::parse` accepted: NFC, trimmed,
/// white space only as single spaces, within length, no control character.
fn assert_valid_text(parsed: &str, max: usize) {
    assert!(is_nfc(parsed), "{parsed:?} is not NFC");
    assert_eq!(parsed, parsed.trim());
    assert!(!parsed.contains("  "), "{parsed:?}");
    assert!(
        parsed.chars().all(|c| c == ' ' || !c.is_whitespace()),
        "{parsed:?}"
    );
    let len = parsed.chars().count();
    assert!((1..=max).contains(&len), "{len} characters");
    assert!(!parsed.chars().any(char::is_control));
}

/// Characters where normalization, case folding and white space have
/// corner cases, mixed with any character at all.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => prop::sample::select(vec![
            'a', 'E', 'z', ' ', '\u{a0}', '\u{2000}', '\u{2001}', '\u{3000}', '\t', '\n',
            '\u{0}', '\u{200b}', '\u{200d}', '\u{feff}', '\u{301}', '\u{308}', '\u{327}',
            '\u{345}', '\u{c9}', '\u{e9}', '\u{df}', '\u{1e9e}', '\u{3a3}', '\u{3c2}',
            '\u{3c3}', '\u{1fb3}', '\u{212b}', '\u{2126}', '\u{130}', '\u{131}', '\u{1100}',
            '\u{1161}', '\u{11a8}', '\u{ac00}', '\u{fb01}', '\u{1f468}',
        ]),
        1 => any::<char>(),
    ]
}

fn tricky_text() -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..24).prop_map(String::from_iter)
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
            assert_valid_text(title.as_str(), Title::MAX_CHARS);
            prop_assert_eq!(Title::parse(title.as_str()), Ok(title.clone()));
        }
    }

    #[test]
    fn an_author_is_accepted_only_when_valid(raw in any::<String>()) {
        if let Ok(author) = Author::parse(&raw) {
            assert_valid_text(author.as_str(), Author::MAX_CHARS);
            prop_assert!(is_nfc(&author.key()));
        }
    }

    #[test]
    fn normalizing_is_idempotent(raw in tricky_text()) {
        if let Ok(title) = Title::parse(&raw) {
            prop_assert_eq!(Title::parse(title.as_str()), Ok(title.clone()));
        }
        if let Ok(author) = Author::parse(&raw) {
            let again = Author::parse(author.as_str()).unwrap();
            prop_assert_eq!(again.key(), author.key());
            prop_assert_eq!(again, author);
        }
    }

    #[test]
    fn canonically_equivalent_inputs_are_stored_and_keyed_alike(raw in tricky_text()) {
        for equivalent in [raw.nfd().collect::<String>(), raw.nfc().collect()] {
            prop_assert_eq!(Title::parse(&equivalent), Title::parse(&raw));
            let (author, other) = (Author::parse(&raw), Author::parse(&equivalent));
            prop_assert_eq!(&other, &author);
            if let (Ok(author), Ok(other)) = (author, other) {
                prop_assert_eq!(other.key(), author.key());
            }
        }
    }

    #[test]
    fn an_author_key_is_its_own_key(raw in tricky_text()) {
        // Folding is stable: a key computed again from a key (reconcile,
        // rebuild) never drifts.
        if let Ok(author) = Author::parse(&raw) {
            let key = author.key();
            if let Ok(keyed) = Author::parse(&key) {
                prop_assert_eq!(keyed.key(), key);
            }
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
