//! The books domain: value types that can only hold valid data, the `Book`
//! they make up, and the events a change to a book causes. No I/O lives here.

mod book;
mod error;
mod event;

pub use book::{
    Author, Book, BookDraft, BookId, BookPatch, BookState, PatchField, PublishedYear, Title,
};
pub use error::{FieldError, Rule, ValidationErrors};
pub use event::{BookEvent, EventDecodeError, EventType};
