//! The basic promise: a book posted to the command service can be read back,
//! unchanged, from the query service.

use reqwest::{header, StatusCode};
use serde_json::json;
use test_support::eventually;

use crate::helpers::{book, spawn_system, DEADLINE};

#[tokio::test]
async fn a_posted_book_can_be_read_from_the_query_service() {
    let system = spawn_system().await;

    let response = system.post_book(&book("Dune")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response
        .headers()
        .get(header::LOCATION)
        .expect("a Location header")
        .to_str()
        .expect("an ASCII Location")
        .to_owned();
    let created: serde_json::Value = response.json().await.expect("a JSON book");
    let id = created["_id"].as_str().expect("an _id");
    assert_eq!(id.len(), 24, "{created}");
    assert!(location.ends_with(&format!("/books/{id}")), "{location}");
    assert_eq!(created["version"], 1, "{created}");
    assert_eq!(created["createdAt"], created["updatedAt"], "{created}");

    // Until the projection catches up the book may be unknown (404):
    // follow the Location until it answers.
    let read = eventually("the Location to serve the book", DEADLINE, || {
        let request = system.http.get(&location);
        async move {
            let response = request.send().await.expect("GET Location answers");
            if response.status() != StatusCode::OK {
                return None;
            }
            Some(
                response
                    .json::<serde_json::Value>()
                    .await
                    .expect("a JSON book"),
            )
        }
    })
    .await;

    assert_eq!(
        read,
        json!({
            "_id": id,
            "title": "Dune",
            "author": "Frank Herbert",
            "publishedYear": 1965,
            "version": 1,
            "createdAt": created["createdAt"],
            "updatedAt": created["updatedAt"],
        })
    );
    assert_eq!(read, created);
    system.shutdown().await;
}

#[tokio::test]
async fn the_query_service_serves_the_book_as_the_command_service_normalized_it() {
    let system = spawn_system().await;

    let created = system
        .create_book(&json!({
            "title": "  Les Misérables 📚  ",
            "author": "\tVictor Hugo ",
            "publishedYear": -800,
        }))
        .await;
    assert_eq!(created["title"], "Les Misérables 📚");
    assert_eq!(created["author"], "Victor Hugo");
    assert_eq!(created["publishedYear"], -800);

    system.await_book(&created).await;
    system.shutdown().await;
}
