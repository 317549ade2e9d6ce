//! `GET /books/{id}`: the read model's view of a book.

use domain::BookEvent;
use serde_json::Value;

use test_support::assert_problem;

use crate::helpers::{new_book, spawn_app, updated};

#[tokio::test]
async fn get_returns_the_book_once_its_event_is_applied() {
    let app = spawn_app().await;
    let book = new_book("The Left Hand of Darkness");

    app.publish(&BookEvent::created(&book, None)).await;

    let body = app.wait_for_version(book.id.as_str(), 1).await;
    assert_eq!(body, serde_json::to_value(&book).unwrap());
}

#[tokio::test]
async fn get_answers_json_with_the_tutorial_field_names() {
    let app = spawn_app().await;
    let book = new_book("Lathe of Heaven");
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_for_version(book.id.as_str(), 1).await;

    let response = app.get_book(book.id.as_str()).await;

    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "_id",
            "author",
            "createdAt",
            "publishedYear",
            "title",
            "updatedAt",
            "version"
        ]
    );
}

#[tokio::test]
async fn get_answers_the_version_as_a_strong_etag() {
    let app = spawn_app().await;
    let book = new_book("Versioned");
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_for_version(book.id.as_str(), 1).await;

    let first = app.get_book(book.id.as_str()).await;
    assert_eq!(first.headers()["etag"], "\"1\"");

    app.publish(&updated(&book, "Versioned again", 2)).await;
    app.wait_for_version(book.id.as_str(), 2).await;
    let second = app.get_book(book.id.as_str()).await;
    assert_eq!(second.headers()["etag"], "\"2\"");
}

#[tokio::test]
async fn get_returns_404_for_an_unknown_book() {
    let app = spawn_app().await;

    let problem = assert_problem(app.get_book("65a1b2c3d4e5f60718293a4b").await, 404).await;

    assert_eq!(problem["type"], "urn:books:problem:not-found");
}

#[tokio::test]
async fn get_returns_400_naming_the_id_when_it_is_not_an_object_id() {
    let app = spawn_app().await;

    for id in [
        "123",
        "zza1b2c3d4e5f60718293a4b",
        "65a1b2c3d4e5f60718293a4b0",
        "%24gt",
        "null",
    ] {
        let problem = assert_problem(app.get_book(id).await, 400).await;
        assert_eq!(
            problem["type"], "urn:books:problem:invalid-parameter",
            "{id}"
        );
        assert_eq!(problem["errors"][0]["field"], "id", "{id}");
        assert_eq!(problem["errors"][0]["rule"], "format", "{id}");
    }
}

#[tokio::test]
async fn get_returns_400_problem_json_for_an_id_that_is_not_utf8() {
    let app = spawn_app().await;

    let problem = assert_problem(app.get_book("%FF%FE").await, 400).await;

    assert_eq!(problem["type"], "urn:books:problem:invalid-parameter");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_problem_json() {
    let app = spawn_app().await;

    assert_problem(app.http.get(app.url("/nowhere")).send().await.unwrap(), 404).await;
    let post = app
        .http
        .post(app.url("/books/65a1b2c3d4e5f60718293a4b"))
        .send()
        .await
        .unwrap();
    assert_problem(post, 405).await;
}
