//! Bearer-token authentication: every command needs an accepted token and
//! is refused before its body is read; health and the OpenAPI document stay
//! open.

use command_service::auth::ApiTokens;
use reqwest::{RequestBuilder, Response};
use serde_json::{json, Value};
use test_support::assert_problem;

use crate::helpers::{
    assert_nothing_written, id_of, spawn_app, spawn_app_with_cleanup, test_settings, valid_book,
    TestApp,
};

const CHALLENGE: &str = "Bearer realm=\"books\"";
const INVALID_TOKEN_CHALLENGE: &str = "Bearer realm=\"books\", error=\"invalid_token\"";

/// Every command, on book `id`, with a body it would accept and no
/// `Authorization` header.
fn commands(app: &TestApp, id: &str) -> Vec<(&'static str, RequestBuilder)> {
    let url = app.url(&format!("/books/{id}"));
    vec![
        ("POST", app.http.post(app.url("/books")).json(&valid_book())),
        (
            "PUT",
            app.http
                .put(&url)
                .json(&json!({ "title": "Changed", "author": "A", "publishedYear": 2000 })),
        ),
        (
            "PATCH",
            app.http
                .patch(&url)
                .header("content-type", "application/merge-patch+json")
                .body(json!({ "title": "Changed" }).to_string()),
        ),
        ("DELETE", app.http.delete(&url)),
    ]
}

/// Asserts a 401 problem with `challenge`, and returns it.
async fn assert_unauthorized(response: Response, challenge: &str, what: &str) -> Value {
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap()),
        Some(challenge),
        "{what}"
    );
    let problem = assert_problem(response, 401).await;
    assert_eq!(problem["type"], "urn:books:problem:unauthorized", "{what}");
    problem
}

#[tokio::test]
async fn every_command_without_a_token_gets_a_401_with_a_bearer_challenge() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;

    for (method, request) in commands(&app, id_of(&book)) {
        let response = request.send().await.unwrap();
        assert_unauthorized(response, CHALLENGE, method).await;
    }

    assert_nothing_written(&app, &book, 1).await;
}

#[tokio::test]
async fn a_scheme_other_than_bearer_gets_a_401_with_a_bearer_challenge() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;

    // Each carries an accepted token, but not as a bearer token.
    for authorization in [
        "Basic dGVzdC10b2tlbg==",
        "Basic test-token",
        "Token test-token",
        "test-token",
        "Bearer",
        "Bearertest-token",
    ] {
        for (method, request) in commands(&app, id_of(&book)) {
            let response = request
                .header("authorization", authorization)
                .send()
                .await
                .unwrap();
            assert_unauthorized(response, CHALLENGE, &format!("{method} {authorization}")).await;
        }
    }

    assert_nothing_written(&app, &book, 1).await;
}

#[tokio::test]
async fn a_token_that_is_not_accepted_gets_a_401_naming_an_invalid_token() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;

    for token in [
        "wrong-token",
        "TEST-TOKEN",
        "test-token-2",
        "test",
        "other-token,test-token",
    ] {
        for (method, request) in commands(&app, id_of(&book)) {
            let response = request.bearer_auth(token).send().await.unwrap();
            assert_unauthorized(
                response,
                INVALID_TOKEN_CHALLENGE,
                &format!("{method} {token}"),
            )
            .await;
        }
    }

    assert_nothing_written(&app, &book, 1).await;
}

#[tokio::test]
async fn a_presented_token_never_appears_in_the_answer() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let secret = "s3cret-7f3a9c-not-accepted";

    for authorization in [format!("Bearer {secret}"), format!("Basic {secret}")] {
        for (method, request) in commands(&app, id_of(&book)) {
            let response = request
                .header("authorization", &authorization)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 401, "{method}");
            for (name, value) in response.headers() {
                assert!(
                    !value.to_str().unwrap_or_default().contains(secret),
                    "{method}: header {name} shows the token"
                );
            }
            let body = response.text().await.unwrap();
            assert!(!body.contains(secret), "{method}: {body}");
            assert!(!body.contains("s3cret"), "{method}: {body}");
        }
    }
}

#[tokio::test]
async fn every_configured_token_is_accepted_with_the_scheme_in_any_case() {
    let app = spawn_app().await;

    let created = app
        .http
        .post(app.url("/books"))
        .bearer_auth("other-token")
        .json(&valid_book())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let book: Value = created.json().await.unwrap();
    let id = id_of(&book);
    let url = app.url(&format!("/books/{id}"));
    app.wait_until_relayed(1).await;

    let patched = app
        .http
        .patch(&url)
        .header("authorization", "bearer other-token")
        .header("content-type", "application/merge-patch+json")
        .body(json!({ "title": "Patched" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status().as_u16(), 200);
    app.wait_until_relayed(2).await;

    let replaced = app
        .http
        .put(&url)
        .header("authorization", "BEARER test-token")
        .json(&valid_book())
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status().as_u16(), 200);
    app.wait_until_relayed(3).await;

    let deleted = app
        .http
        .delete(&url)
        .bearer_auth("other-token")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(deleted.headers()["etag"], "\"4\"");
}

#[tokio::test]
async fn with_no_token_configured_every_command_gets_a_401_and_the_rest_stays_open() {
    let mut settings = test_settings().await;
    settings.api_tokens = ApiTokens::parse("");
    let app = spawn_app_with_cleanup(settings).await;
    let id = bson::oid::ObjectId::new().to_hex();

    for (method, request) in commands(&app, &id) {
        for authorization in [None, Some("Bearer test-token"), Some("Bearer ")] {
            let request = request.try_clone().unwrap();
            let request = match authorization {
                Some(value) => request.header("authorization", value),
                None => request,
            };
            let response = request.send().await.unwrap();
            assert_unauthorized(response, CHALLENGE, &format!("{method} {authorization:?}")).await;
        }
    }
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
    assert!(app.stored_books().await.is_empty());
}

#[tokio::test]
async fn health_and_the_openapi_document_need_no_token() {
    let app = spawn_app().await;

    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
}

#[tokio::test]
async fn an_unauthenticated_command_gets_a_401_before_its_body_or_id_is_looked_at() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);
    let huge =
        json!({ "title": "x".repeat(32 * 1024), "author": "A", "publishedYear": 2000 }).to_string();
    let unknown = bson::oid::ObjectId::new().to_hex();

    for (token, challenge) in [
        (None, CHALLENGE),
        (Some("wrong-token"), INVALID_TOKEN_CHALLENGE),
    ] {
        let requests = [
            // Over the body limit: 413 once authenticated.
            (
                "huge POST",
                app.http
                    .post(app.url("/books"))
                    .header("content-type", "application/json")
                    .body(huge.clone()),
            ),
            (
                "huge PUT",
                app.http
                    .put(app.url(&format!("/books/{id}")))
                    .header("content-type", "application/json")
                    .body(huge.clone()),
            ),
            // Not JSON: 415 once authenticated.
            (
                "text PATCH",
                app.http
                    .patch(app.url(&format!("/books/{id}")))
                    .header("content-type", "text/plain")
                    .body("title=T"),
            ),
            // Malformed: 400 once authenticated.
            (
                "malformed POST",
                app.http
                    .post(app.url("/books"))
                    .header("content-type", "application/json")
                    .body("{"),
            ),
            // Invalid id: 400 once authenticated.
            (
                "invalid id DELETE",
                app.http.delete(app.url("/books/not-an-id")),
            ),
            // Unknown book: 404 once authenticated.
            (
                "unknown DELETE",
                app.http.delete(app.url(&format!("/books/{unknown}"))),
            ),
        ];
        for (what, request) in requests {
            let request = match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            };
            let response = request.send().await.unwrap();
            assert_unauthorized(response, challenge, &format!("{what} with {token:?}")).await;
        }
    }

    assert_nothing_written(&app, &book, 1).await;
}
