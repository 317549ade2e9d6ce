//! `PUT`, `PATCH` and `DELETE /books/{id}`: new versions, their events, and
//! optimistic concurrency with `If-Match`.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::spawn_app;

#[tokio::test]
async fn patch_changes_the_fields_sent_and_bumps_the_version() {
    let app = spawn_app().await;
    let book = app.create_book().await;
    let id = book["_id"].as_str().unwrap();

    let response = app
        .request(Method::PATCH, &format!("/books/{id}"))
        .header("content-type", "application/merge-patch+json")
        .body(json!({ "publishedYear": 1966 }).to_string())
        .send()
        .await
        .unwrap();

    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["publishedYear"], 1966);
    assert_eq!(patched["title"], book["title"]);
    assert_eq!(patched["version"], 2);
    let stored = app.stored_books().await;
    assert_eq!(stored[0].get_i32("publishedYear").unwrap(), 1966);
    assert_eq!(stored[0].get_i64("version").unwrap(), 2);
}
