//! One author, one name: titles and authors are stored in NFC with inner
//! white space collapsed, and an author is found whatever the case (full
//! Unicode case folding) or the normalization form it is written in.

use reqwest::StatusCode;
use serde_json::{json, Value};
use test_support::eventually;

use crate::helpers::{spawn_system, DEADLINE};

fn by(author: &str) -> Value {
    json!({ "title": "Germinal", "author": author, "publishedYear": 1885 })
}

#[tokio::test]
async fn an_author_spelled_three_ways_is_one_author() {
    let system = spawn_system().await;

    let composed = system.create_book(&by("\u{c9}mile Zola")).await;
    let decomposed = system.create_book(&by("E\u{301}mile Zola")).await;
    let shouted = system.create_book(&by("\u{c9}MILE  ZOLA")).await;
    // Stored (and answered) in NFC, inner white space collapsed.
    assert_eq!(composed["author"], "\u{c9}mile Zola");
    assert_eq!(decomposed["author"], "\u{c9}mile Zola");
    assert_eq!(shouted["author"], "\u{c9}MILE ZOLA");

    let summary_url = format!("{}/authors/\u{c9}mile Zola", system.query_url);
    let summary = eventually("the author's summary to count 3 books", DEADLINE, || {
        let (http, url) = (&system.http, &summary_url);
        async move {
            let response = http.get(url).send().await.expect("GET /authors answers");
            if response.status() != StatusCode::OK {
                return None;
            }
            let summary: Value = response.json().await.expect("a JSON summary");
            (summary["bookCount"] == 3).then_some(summary)
        }
    })
    .await;
    assert_eq!(
        summary["titles"],
        json!(["Germinal", "Germinal", "Germinal"])
    );

    let response = system
        .http
        .get(format!("{}/books", system.query_url))
        .query(&[("author", "\u{e9}mile zola")])
        .send()
        .await
        .expect("GET /books answers");
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.expect("a JSON page");
    let mut listed: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|book| book["_id"].as_str())
        .collect();
    listed.sort_unstable();
    let mut created: Vec<&str> = [&composed, &decomposed, &shouted]
        .iter()
        .filter_map(|book| book["_id"].as_str())
        .collect();
    created.sort_unstable();
    assert_eq!(listed, created, "{page}");

    system.shutdown().await;
}

#[tokio::test]
async fn a_title_of_invisible_characters_is_refused_naming_the_title() {
    let system = spawn_system().await;

    for title in ["\u{200b}", "\u{200b}\u{feff} \u{200b}"] {
        let response = system
            .post_book(&json!({ "title": title, "author": "Anon", "publishedYear": 2000 }))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{title:?}"
        );
        let problem: Value = response.json().await.expect("a JSON problem");
        assert_eq!(problem["errors"][0]["field"], "title", "{problem}");
        assert_eq!(problem["errors"][0]["rule"], "invisible", "{problem}");
    }
    assert_eq!(system.count_books(&system.write_db).await, 0);

    system.shutdown().await;
}
