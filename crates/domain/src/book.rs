//! A book and the value types it is made of. Each type can only be built
//! valid ("parse, don't validate"): once a handler holds a `BookDraft`, every
//! rule below has been checked.

use caseless::Caseless;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::error::{FieldError, Rule, ValidationErrors};

/// Reads a free-text field into its one stored form: Unicode NFC, trimmed,
/// inner runs of white space collapsed to one space, at most `max`
/// characters (Unicode scalar values, counted on that form). Refuses a value
/// with no visible character (`required` when blank, `invisible` when made
/// only of format, control or white-space characters) and one that mixes
/// control characters into visible ones.
fn parse_text(field: &'static str, raw: &str, max: usize) -> Result<String, FieldError> {
    let normalized: String = raw.nfc().collect();
    let trimmed = normalized.trim();
    if trimmed.is_empty() {
        return Err(FieldError::new(field, Rule::Required, "must not be empty"));
    }
    if trimmed.chars().all(is_invisible) {
        return Err(FieldError::new(
            field,
            Rule::Invisible,
            "must have a visible character, not only format, control or white-space characters",
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            Rule::ControlCharacter,
            "must not contain control characters",
        ));
    }
    let collapsed = collapse_whitespace(trimmed);
    let len = collapsed.chars().count();
    if len > max {
        return Err(FieldError::new(
            field,
            Rule::TooLong,
            format!("must be at most {max} characters, got {len}"),
        ));
    }
    Ok(collapsed)
}

/// Whether `c` shows nothing on its own: white space, a control character
/// or a format character (category Cf: zero-width space, BOM, bidi marks...).
fn is_invisible(c: char) -> bool {
    c.is_whitespace() || c.is_control() || c.general_category() == GeneralCategory::Format
}

/// `text` (already trimmed) with each run of white space made one space.
fn collapse_whitespace(text: &str) -> String {
    let mut collapsed = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !collapsed.is_empty() {
            collapsed.push(' ');
        }
        collapsed.push_str(word);
    }
    collapsed
}

macro_rules! text_type {
    ($(#[$doc:meta])* schema($($schema:tt)*) $name:ident, $field:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(try_from = "String", into = "String")]
        // An approximation of `parse_text` that every stored value matches:
        // no control character, and one that is neither white space nor a
        // control character. It lets through values made only of format
        // characters (U+200B...), which `parse_text` refuses: ECMAScript
        // patterns name no general category without the `u` flag.
        #[schema(
            pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$",
            $($schema)*
        )]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            pub fn parse(raw: &str) -> Result<Self, FieldError> {
                parse_text($field, raw, Self::MAX_CHARS).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = FieldError;

            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

text_type!(
    /// A book's title: 1 to 200 characters once trimmed and normalized (NFC,
    /// inner white space collapsed), at least one visible, no control
    /// characters.
    schema(value_type = String, min_length = 1, max_length = 200, example = "Dune")
    Title,
    "title",
    200
);

text_type!(
    /// A book's author: 1 to 100 characters once trimmed and normalized (NFC,
    /// inner white space collapsed), at least one visible, no control
    /// characters.
    schema(value_type = String, min_length = 1, max_length = 100, example = "Frank Herbert")
    Author,
    "author",
    100
);

impl Author {
    /// The form under which an author is looked up and grouped: full
    /// Unicode case folding of the canonical decomposition, then NFC again
    /// (canonical caseless matching), so `Ursula K. Le Guin` and
    /// `ursula k. le guin`, or `Strauß` and `STRAUSS`, are one author.
    pub fn key(&self) -> String {
        self.0.nfd().default_case_fold().nfc().collect()
    }
}

/// The year a book was published: an integer from -3000 (3001 BCE) to 2100.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "i64", into = "i32")]
#[schema(value_type = i32, minimum = -3000, maximum = 2100, example = 1965)]
pub struct PublishedYear(i32);

impl PublishedYear {
    pub const MIN: i32 = -3000;
    pub const MAX: i32 = 2100;

    pub fn parse(raw: i64) -> Result<Self, FieldError> {
        match i32::try_from(raw) {
            Ok(year) if (Self::MIN..=Self::MAX).contains(&year) => Ok(Self(year)),
            _ => Err(FieldError::new(
                "publishedYear",
                Rule::OutOfRange,
                format!(
                    "must be an integer from {} to {}, got {raw}",
                    Self::MIN,
                    Self::MAX
                ),
            )),
        }
    }

    pub fn value(self) -> i32 {
        self.0
    }
}

impl TryFrom<i64> for PublishedYear {
    type Error = FieldError;

    fn try_from(raw: i64) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<PublishedYear> for i32 {
    fn from(value: PublishedYear) -> Self {
        value.0
    }
}

/// A book's identity: 24 hexadecimal digits (the text form of a MongoDB
/// ObjectId), kept in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = "^[0-9a-fA-F]{24}$", example = "65a1b2c3d4e5f60718293a4b")]
pub struct BookId(String);

impl BookId {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        if raw.len() == 24 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(raw.to_ascii_lowercase()))
        } else {
            Err(FieldError::new(
                "id",
                Rule::Format,
                "must be 24 hexadecimal digits",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BookId {
    type Error = FieldError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<BookId> for String {
    fn from(value: BookId) -> Self {
        value.0
    }
}

impl std::fmt::Display for BookId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The validated content of a create (and, later, replace) command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookDraft {
    pub title: Title,
    pub author: Author,
    pub published_year: PublishedYear,
}

impl BookDraft {
    /// Validates every field and reports every failure, not just the first.
    pub fn parse(title: &str, author: &str, published_year: i64) -> Result<Self, ValidationErrors> {
        let title = Title::parse(title);
        let author = Author::parse(author);
        let published_year = PublishedYear::parse(published_year);
        match (title, author, published_year) {
            (Ok(title), Ok(author), Ok(published_year)) => Ok(Self {
                title,
                author,
                published_year,
            }),
            (title, author, year) => Err(ValidationErrors(
                [title.err(), author.err(), year.err()]
                    .into_iter()
                    .flatten()
                    .collect(),
            )),
        }
    }
}

/// One field of a JSON merge patch (RFC 7396).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchField<T> {
    /// Absent from the patch: the field keeps its value.
    Keep,
    /// `null` in the patch: a removal, which a book refuses (every field is
    /// required).
    Remove,
    /// A new value.
    Set(T),
}

/// The validated content of a partial update: each field present replaces
/// the book's current one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BookPatch {
    pub title: Option<Title>,
    pub author: Option<Author>,
    pub published_year: Option<PublishedYear>,
}

impl BookPatch {
    /// Validates every field present and reports every failure; a `null`
    /// breaks the `required` rule.
    pub fn parse(
        title: PatchField<&str>,
        author: PatchField<&str>,
        published_year: PatchField<i64>,
    ) -> Result<Self, ValidationErrors> {
        fn field<T, R>(
            name: &'static str,
            raw: PatchField<R>,
            parse: impl FnOnce(R) -> Result<T, FieldError>,
        ) -> Result<Option<T>, FieldError> {
            match raw {
                PatchField::Keep => Ok(None),
                PatchField::Remove => Err(FieldError::new(
                    name,
                    Rule::Required,
                    "cannot be removed: every field of a book is required",
                )),
                PatchField::Set(value) => parse(value).map(Some),
            }
        }
        let title = field("title", title, Title::parse);
        let author = field("author", author, Author::parse);
        let published_year = field("publishedYear", published_year, PublishedYear::parse);
        match (title, author, published_year) {
            (Ok(title), Ok(author), Ok(published_year)) => Ok(Self {
                title,
                author,
                published_year,
            }),
            (title, author, year) => Err(ValidationErrors(
                [title.err(), author.err(), year.err()]
                    .into_iter()
                    .flatten()
                    .collect(),
            )),
        }
    }
}

/// The full state of a book, as carried by events and served by reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BookState {
    pub title: Title,
    pub author: Author,
    pub published_year: PublishedYear,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A book with its identity and version (1 on create, +1 per change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Book {
    #[serde(rename = "_id")]
    pub id: BookId,
    #[serde(flatten)]
    pub state: BookState,
    /// 1 on create, +1 per change; the `ETag` of the book is this number.
    #[schema(minimum = 1, example = 1)]
    pub version: u64,
}

impl Book {
    /// The first version of a book created from `draft` at `now`.
    pub fn create(id: BookId, draft: BookDraft, now: DateTime<Utc>) -> Self {
        Self {
            id,
            state: BookState {
                title: draft.title,
                author: draft.author,
                published_year: draft.published_year,
                created_at: now,
                updated_at: now,
            },
            version: 1,
        }
    }

    /// The next version of this book with `draft`'s content, changed at
    /// `now`; `None` when the content would not change.
    pub fn replace(&self, draft: BookDraft, now: DateTime<Utc>) -> Option<Self> {
        let unchanged = draft.title == self.state.title
            && draft.author == self.state.author
            && draft.published_year == self.state.published_year;
        (!unchanged).then(|| Self {
            id: self.id.clone(),
            state: BookState {
                title: draft.title,
                author: draft.author,
                published_year: draft.published_year,
                created_at: self.state.created_at,
                updated_at: now.max(self.state.updated_at),
            },
            version: self.version + 1,
        })
    }

    /// The next version of this book with `patch` merged in; `None` when
    /// the content would not change.
    pub fn patch(&self, patch: BookPatch, now: DateTime<Utc>) -> Option<Self> {
        let draft = BookDraft {
            title: patch.title.unwrap_or_else(|| self.state.title.clone()),
            author: patch.author.unwrap_or_else(|| self.state.author.clone()),
            published_year: patch.published_year.unwrap_or(self.state.published_year),
        };
        self.replace(draft, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_of<T: std::fmt::Debug>(result: Result<T, FieldError>) -> (&'static str, Rule) {
        let err = result.unwrap_err();
        (err.field, err.rule)
    }

    #[test]
    fn title_is_trimmed() {
        assert_eq!(Title::parse("  Dune \n").unwrap().as_str(), "Dune");
    }

    #[test]
    fn empty_or_blank_title_is_required() {
        assert_eq!(rule_of(Title::parse("")), ("title", Rule::Required));
        assert_eq!(rule_of(Title::parse(" \t\n ")), ("title", Rule::Required));
    }

    #[test]
    fn title_of_200_characters_is_accepted_and_201_rejected() {
        // Multi-byte characters count once each.
        assert!(Title::parse(&"é".repeat(200)).is_ok());
        assert_eq!(
            rule_of(Title::parse(&"é".repeat(201))),
            ("title", Rule::TooLong)
        );
    }

    #[test]
    fn control_characters_inside_a_title_are_rejected() {
        assert_eq!(
            rule_of(Title::parse("Du\u{0}ne")),
            ("title", Rule::ControlCharacter)
        );
        assert_eq!(
            rule_of(Title::parse("Du\nne")),
            ("title", Rule::ControlCharacter)
        );
    }

    #[test]
    fn author_rules_name_the_author_field() {
        assert_eq!(rule_of(Author::parse("  ")), ("author", Rule::Required));
        assert!(Author::parse(&"a".repeat(100)).is_ok());
        assert_eq!(
            rule_of(Author::parse(&"a".repeat(101))),
            ("author", Rule::TooLong)
        );
        assert_eq!(
            rule_of(Author::parse("a\u{7f}b")),
            ("author", Rule::ControlCharacter)
        );
    }

    #[test]
    fn composed_and_decomposed_letters_are_stored_alike() {
        let composed = Author::parse("\u{c9}mile Zola").unwrap();
        let decomposed = Author::parse("E\u{301}mile Zola").unwrap();
        assert_eq!(composed.as_str(), "\u{c9}mile Zola");
        assert_eq!(decomposed, composed);
        assert_eq!(decomposed.key(), composed.key());
        assert_eq!(
            Title::parse("Ame\u{301}lie").unwrap().as_str(),
            "Am\u{e9}lie"
        );
    }

    #[test]
    fn inner_white_space_is_collapsed_to_one_space() {
        assert_eq!(
            Title::parse("  Dune \u{a0}\u{2003}  Messiah ")
                .unwrap()
                .as_str(),
            "Dune Messiah"
        );
        assert_eq!(
            Author::parse("\u{c9}MILE  ZOLA").unwrap().as_str(),
            "\u{c9}MILE ZOLA"
        );
    }

    #[test]
    fn length_is_counted_once_white_space_is_collapsed() {
        let spaced = format!("a{}b", " ".repeat(300));
        assert_eq!(Title::parse(&spaced).unwrap().as_str(), "a b");
    }

    #[test]
    fn author_key_folds_case_and_spacing() {
        let key = |raw: &str| Author::parse(raw).unwrap().key();
        assert_eq!(key("\u{c9}MILE  ZOLA"), key("\u{c9}mile Zola"));
        assert_eq!(key("\u{c9}mile Zola"), "\u{e9}mile zola");
    }

    #[test]
    fn author_key_uses_full_unicode_case_folding() {
        let key = |raw: &str| Author::parse(raw).unwrap().key();
        assert_eq!(key("Stra\u{df}e"), key("STRASSE"));
        assert_eq!(key("\u{3a3}\u{391}\u{3a3}"), key("\u{3c3}\u{3b1}\u{3c2}"));
        // Canonical caseless: U+1FB3 (alpha with ypogegrammeni) folds to
        // alpha iota, as its decomposition does.
        assert_eq!(key("\u{1fb3}"), key("\u{391}\u{399}"));
    }

    #[test]
    fn a_value_with_no_visible_character_is_invisible() {
        for raw in [
            "\u{200b}",
            "\u{feff}",
            " \u{200b}\u{200d} \u{2060} ",
            "\u{0}",
            "\u{200b}\n\u{200b}",
        ] {
            assert_eq!(
                rule_of(Title::parse(raw)),
                ("title", Rule::Invisible),
                "{raw:?}"
            );
            assert_eq!(
                rule_of(Author::parse(raw)),
                ("author", Rule::Invisible),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn format_characters_among_visible_ones_are_kept() {
        // A zero-width joiner holds an emoji sequence together.
        let family = "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}";
        assert_eq!(Title::parse(family).unwrap().as_str(), family);
    }

    #[test]
    fn published_year_bounds_are_inclusive() {
        assert_eq!(PublishedYear::parse(-3000).unwrap().value(), -3000);
        assert_eq!(PublishedYear::parse(2100).unwrap().value(), 2100);
        assert_eq!(
            rule_of(PublishedYear::parse(-3001)),
            ("publishedYear", Rule::OutOfRange)
        );
        assert_eq!(
            rule_of(PublishedYear::parse(2101)),
            ("publishedYear", Rule::OutOfRange)
        );
    }

    #[test]
    fn published_year_beyond_i32_is_out_of_range_not_truncated() {
        assert_eq!(
            rule_of(PublishedYear::parse(i64::from(i32::MAX) + 2024)),
            ("publishedYear", Rule::OutOfRange)
        );
    }

    #[test]
    fn book_id_accepts_24_hex_digits_and_lowercases_them() {
        let id = BookId::parse("65A1B2C3D4E5F60718293A4B").unwrap();
        assert_eq!(id.as_str(), "65a1b2c3d4e5f60718293a4b");
    }

    #[test]
    fn book_id_rejects_other_shapes() {
        for raw in [
            "",
            "123",
            "65a1b2c3d4e5f60718293a4",
            "65a1b2c3d4e5f60718293a4bz",
            "zza1b2c3d4e5f60718293a4b",
        ] {
            assert_eq!(rule_of(BookId::parse(raw)), ("id", Rule::Format), "{raw:?}");
        }
    }

    #[test]
    fn draft_reports_every_invalid_field_at_once() {
        let errors = BookDraft::parse("", "x".repeat(101).as_str(), 3000).unwrap_err();
        let fields: Vec<_> = errors.0.iter().map(|e| (e.field, e.rule)).collect();
        assert_eq!(
            fields,
            vec![
                ("title", Rule::Required),
                ("author", Rule::TooLong),
                ("publishedYear", Rule::OutOfRange)
            ]
        );
    }

    #[test]
    fn created_book_starts_at_version_one_with_equal_timestamps() {
        let draft = BookDraft::parse("Dune", "Frank Herbert", 1965).unwrap();
        let now = Utc::now();
        let book = Book::create(BookId::parse(&"a".repeat(24)).unwrap(), draft, now);
        assert_eq!(book.version, 1);
        assert_eq!(book.state.created_at, now);
        assert_eq!(book.state.updated_at, now);
    }

    fn dune() -> Book {
        let draft = BookDraft::parse("Dune", "Frank Herbert", 1965).unwrap();
        Book::create(
            BookId::parse(&"a".repeat(24)).unwrap(),
            draft,
            "2024-05-01T10:00:00.123Z".parse().unwrap(),
        )
    }

    #[test]
    fn replacing_bumps_the_version_and_keeps_the_creation_time() {
        let book = dune();
        let later = book.state.created_at + chrono::Duration::seconds(5);
        let draft = BookDraft::parse("Dune Messiah", "Frank Herbert", 1969).unwrap();
        let next = book.replace(draft, later).unwrap();
        assert_eq!(next.version, 2);
        assert_eq!(next.state.title.as_str(), "Dune Messiah");
        assert_eq!(next.state.created_at, book.state.created_at);
        assert_eq!(next.state.updated_at, later);
    }

    #[test]
    fn replacing_with_the_same_content_changes_nothing() {
        let book = dune();
        let draft = BookDraft::parse(" Dune ", "Frank Herbert", 1965).unwrap();
        assert_eq!(book.replace(draft, Utc::now()), None);
    }

    #[test]
    fn update_time_never_goes_backwards() {
        let book = dune();
        let earlier = book.state.updated_at - chrono::Duration::seconds(5);
        let draft = BookDraft::parse("Dune", "F. Herbert", 1965).unwrap();
        let next = book.replace(draft, earlier).unwrap();
        assert_eq!(next.state.updated_at, book.state.updated_at);
    }

    #[test]
    fn patch_changes_only_the_fields_present() {
        let patch =
            BookPatch::parse(PatchField::Keep, PatchField::Keep, PatchField::Set(1966)).unwrap();
        let next = dune().patch(patch, Utc::now()).unwrap();
        assert_eq!(next.state.published_year.value(), 1966);
        assert_eq!(next.state.title.as_str(), "Dune");
        assert_eq!(next.state.author.as_str(), "Frank Herbert");
        assert_eq!(next.version, 2);
    }

    #[test]
    fn an_empty_patch_changes_nothing() {
        assert_eq!(dune().patch(BookPatch::default(), Utc::now()), None);
    }

    #[test]
    fn patch_refuses_removals_and_reports_every_invalid_field() {
        let errors = BookPatch::parse(
            PatchField::Remove,
            PatchField::Set(""),
            PatchField::Set(9999),
        )
        .unwrap_err();
        let fields: Vec<_> = errors.0.iter().map(|e| (e.field, e.rule)).collect();
        assert_eq!(
            fields,
            vec![
                ("title", Rule::Required),
                ("author", Rule::Required),
                ("publishedYear", Rule::OutOfRange)
            ]
        );
    }

    #[test]
    fn author_key_ignores_case() {
        let a = Author::parse("Ursula K. Le Guin").unwrap();
        let b = Author::parse("URSULA k. le guin").unwrap();
        assert_eq!(a.key(), b.key());
    }

    #[test]
    fn book_serializes_with_the_tutorial_field_names() {
        let draft = BookDraft::parse("Dune", "Frank Herbert", 1965).unwrap();
        let now = "2024-05-01T10:00:00.123Z".parse().unwrap();
        let book = Book::create(BookId::parse(&"a".repeat(24)).unwrap(), draft, now);
        assert_eq!(
            serde_json::to_value(&book).unwrap(),
            serde_json::json!({
                "_id": "aaaaaaaaaaaaaaaaaaaaaaaa",
                "title": "Dune",
                "author": "Frank Herbert",
                "publishedYear": 1965,
                "createdAt": "2024-05-01T10:00:00.123Z",
                "updatedAt": "2024-05-01T10:00:00.123Z",
                "version": 1
            })
        );
    }
}
