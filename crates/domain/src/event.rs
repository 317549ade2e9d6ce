//! The event envelope: what the command side publishes and the query side
//! consumes. Each event carries the full state of the book after the change
//! and its version, so a consumer can apply events idempotently and in any
//! order (newer version wins).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::book::{Book, BookId, BookState};

/// What happened to a book. The serialized names are also the Pub/Sub
/// channel names, as in the tutorial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EventType {
    BookCreated,
    BookUpdated,
    BookDeleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::BookCreated => "bookCreated",
            EventType::BookUpdated => "bookUpdated",
            EventType::BookDeleted => "bookDeleted",
        }
    }
}

/// One event, as one stream entry and one Pub/Sub message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BookEvent {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub book_id: BookId,
    pub version: u64,
    pub occurred_at: DateTime<Utc>,
    /// Full state after the change; absent on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub book: Option<BookState>,
    /// W3C trace context of the request that caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Why a stream entry could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum EventDecodeError {
    #[error("not a valid event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("version must be at least 1")]
    ZeroVersion,
    #[error("{0} event must carry the book's state")]
    MissingState(&'static str),
    #[error("bookDeleted event must not carry a book state")]
    UnexpectedState,
}

impl BookEvent {
    /// The event that records the creation of `book`.
    pub fn created(book: &Book, traceparent: Option<String>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: EventType::BookCreated,
            book_id: book.id.clone(),
            version: book.version,
            occurred_at: book.state.updated_at,
            book: Some(book.state.clone()),
            traceparent,
        }
    }

    /// The event that records `book` becoming its current version by an
    /// update.
    pub fn updated(book: &Book, traceparent: Option<String>) -> Self {
        Self {
            event_type: EventType::BookUpdated,
            ..Self::created(book, traceparent)
        }
    }

    /// The event that records the deletion of book `id`, which made its
    /// version `version`, at `at`.
    pub fn deleted(
        id: &BookId,
        version: u64,
        at: DateTime<Utc>,
        traceparent: Option<String>,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: EventType::BookDeleted,
            book_id: id.clone(),
            version,
            occurred_at: at,
            book: None,
            traceparent,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an event always serializes")
    }

    /// Decodes and checks an event. Unknown fields are ignored so that older
    /// consumers keep working when producers add fields.
    pub fn from_json(raw: &str) -> Result<Self, EventDecodeError> {
        let event: Self = serde_json::from_str(raw)?;
        if event.version == 0 {
            return Err(EventDecodeError::ZeroVersion);
        }
        match (event.event_type, &event.book) {
            (EventType::BookDeleted, Some(_)) => Err(EventDecodeError::UnexpectedState),
            (EventType::BookDeleted, None) | (_, Some(_)) => Ok(event),
            (kind, None) => Err(EventDecodeError::MissingState(kind.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::BookDraft;
    use serde_json::json;

    fn book() -> Book {
        let draft = BookDraft::parse("Dune", "Frank Herbert", 1965).unwrap();
        Book::create(
            BookId::parse("65a1b2c3d4e5f60718293a4b").unwrap(),
            draft,
            "2024-05-01T10:00:00.123Z".parse().unwrap(),
        )
    }

    #[test]
    fn created_event_has_the_documented_envelope() {
        let event = BookEvent::created(&book(), Some("00-abc-def-01".into()));
        let value: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(
            value,
            json!({
                "eventId": event.event_id.to_string(),
                "type": "bookCreated",
                "bookId": "65a1b2c3d4e5f60718293a4b",
                "version": 1,
                "occurredAt": "2024-05-01T10:00:00.123Z",
                "book": {
                    "title": "Dune",
                    "author": "Frank Herbert",
                    "publishedYear": 1965,
                    "createdAt": "2024-05-01T10:00:00.123Z",
                    "updatedAt": "2024-05-01T10:00:00.123Z"
                },
                "traceparent": "00-abc-def-01"
            })
        );
    }

    #[test]
    fn event_without_traceparent_omits_the_field() {
        let json = BookEvent::created(&book(), None).to_json();
        assert!(!json.contains("traceparent"), "{json}");
    }

    #[test]
    fn updated_and_deleted_events_decode_as_valid_events() {
        let mut book = book();
        book.version = 2;
        let updated = BookEvent::updated(&book, None);
        assert_eq!(updated.event_type, EventType::BookUpdated);
        assert_eq!(BookEvent::from_json(&updated.to_json()).unwrap(), updated);
        let deleted = BookEvent::deleted(&book.id, 3, book.state.updated_at, None);
        assert_eq!(deleted.book, None);
        assert_eq!(BookEvent::from_json(&deleted.to_json()).unwrap(), deleted);
    }

    #[test]
    fn event_round_trips_through_json() {
        let event = BookEvent::created(&book(), None);
        assert_eq!(BookEvent::from_json(&event.to_json()).unwrap(), event);
    }

    #[test]
    fn decoding_ignores_unknown_fields() {
        let mut value = serde_json::to_value(BookEvent::created(&book(), None)).unwrap();
        value["addedLater"] = json!(true);
        assert!(BookEvent::from_json(&value.to_string()).is_ok());
    }

    #[test]
    fn decoding_rejects_invalid_book_state() {
        let mut value = serde_json::to_value(BookEvent::created(&book(), None)).unwrap();
        value["book"]["title"] = json!("   ");
        assert!(matches!(
            BookEvent::from_json(&value.to_string()),
            Err(EventDecodeError::Json(_))
        ));
    }

    #[test]
    fn decoding_rejects_version_zero_and_unknown_types() {
        let mut value = serde_json::to_value(BookEvent::created(&book(), None)).unwrap();
        value["version"] = json!(0);
        assert!(matches!(
            BookEvent::from_json(&value.to_string()),
            Err(EventDecodeError::ZeroVersion)
        ));
        value["version"] = json!(1);
        value["type"] = json!("bookBurned");
        assert!(BookEvent::from_json(&value.to_string()).is_err());
    }

    #[test]
    fn created_and_updated_events_must_carry_state_and_deleted_must_not() {
        let mut value = serde_json::to_value(BookEvent::created(&book(), None)).unwrap();
        let state = value.as_object_mut().unwrap().remove("book").unwrap();
        assert!(matches!(
            BookEvent::from_json(&value.to_string()),
            Err(EventDecodeError::MissingState("bookCreated"))
        ));
        value["type"] = json!("bookDeleted");
        assert!(BookEvent::from_json(&value.to_string()).is_ok());
        value["book"] = state;
        assert!(matches!(
            BookEvent::from_json(&value.to_string()),
            Err(EventDecodeError::UnexpectedState)
        ));
    }

    #[test]
    fn event_type_names_are_the_channel_names() {
        for kind in [
            EventType::BookCreated,
            EventType::BookUpdated,
            EventType::BookDeleted,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), json!(kind.as_str()));
        }
    }

    #[test]
    fn garbage_is_not_an_event() {
        for raw in [
            "",
            "{",
            "null",
            "[]",
            "\"bookCreated\"",
            "{\"type\":\"bookCreated\"}",
        ] {
            assert!(BookEvent::from_json(raw).is_err(), "{raw:?}");
        }
    }
}
