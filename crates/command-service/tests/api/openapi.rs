//! `GET /openapi.json`: the document describes every route, and every
//! operation it describes is served.

use reqwest::Method;
use serde_json::{json, Value};
use test_support::assert_problem;

use crate::helpers::{spawn_app, TestApp};

/// Every operation the service serves, as the document must list it.
const OPERATIONS: [(&str, &str); 7] = [
    ("/books", "post"),
    ("/books/{id}", "put"),
    ("/books/{id}", "patch"),
    ("/books/{id}", "delete"),
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/openapi.json", "get"),
];

/// The commands: each needs a bearer token.
const COMMANDS: [(&str, &str); 4] = [
    ("/books", "post"),
    ("/books/{id}", "put"),
    ("/books/{id}", "patch"),
    ("/books/{id}", "delete"),
];

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn openapi_document(app: &TestApp) -> Value {
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("the document is JSON")
}

#[tokio::test]
async fn the_document_is_served_as_json_and_is_openapi_3_1() {
    let app = spawn_app().await;

    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();

    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let document: Value = response.json().await.unwrap();
    let version = document["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3.1."), "openapi {version}");
    assert!(
        document["info"]["title"].is_string(),
        "{}",
        document["info"]
    );
}

#[tokio::test]
async fn the_document_lists_every_operation() {
    let app = spawn_app().await;

    let document = openapi_document(&app).await;

    for (path, method) in OPERATIONS {
        assert!(
            document["paths"][path][method].is_object(),
            "{method} {path} is not in the document"
        );
    }
}

#[tokio::test]
async fn each_book_command_requires_a_bearer_token_and_documents_its_401() {
    let app = spawn_app().await;

    let document = openapi_document(&app).await;

    let scheme = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    for (path, method) in COMMANDS {
        let operation = &document["paths"][path][method];
        assert_eq!(
            operation["security"],
            json!([{ "bearer": [] }]),
            "{method} {path}"
        );
        assert!(
            operation["responses"]["401"].is_object(),
            "{method} {path} does not document its 401"
        );
    }
    // Nothing else asks for a token: not the document as a whole, not the
    // open routes.
    assert!(
        document.get("security").is_none(),
        "{}",
        document["security"]
    );
    for (path, method) in OPERATIONS
        .into_iter()
        .filter(|operation| !COMMANDS.contains(operation))
    {
        let operation = &document["paths"][path][method];
        assert!(
            operation.get("security").is_none(),
            "{method} {path} asks for {}",
            operation["security"]
        );
    }
}

/// `template` with each `{parameter}` replaced by a valid book id.
fn concrete(template: &str) -> String {
    let id = bson::oid::ObjectId::new().to_hex();
    let mut path = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').expect("a closed parameter") + start;
        path.push_str(&rest[..start]);
        path.push_str(&id);
        rest = &rest[end + 1..];
    }
    path.push_str(rest);
    path
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let app = spawn_app().await;
    let document = openapi_document(&app).await;
    // What the router answers for a path it has no route for.
    let unrouted = "/no/such/route";
    let problem = assert_problem(app.http.get(app.url(unrouted)).send().await.unwrap(), 404).await;
    let no_route = |path: &str| json!(problem["detail"].as_str().unwrap().replace(unrouted, path));

    let mut checked = Vec::new();
    for (template, item) in document["paths"].as_object().expect("paths") {
        for method in item
            .as_object()
            .expect("a path item")
            .keys()
            .filter(|key| HTTP_METHODS.contains(&key.as_str()))
        {
            let path = concrete(template);
            let response = app
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    &path,
                )
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();

            let status = response.status().as_u16();
            assert_ne!(
                status, 405,
                "{method} {template} is documented but not allowed"
            );
            if status == 404 {
                let body: Value = response.json().await.unwrap();
                assert_ne!(
                    body["detail"],
                    no_route(&path),
                    "{method} {template} is documented but not routed"
                );
            }
            checked.push((template.clone(), method.clone()));
        }
    }
    for (path, method) in OPERATIONS {
        assert!(
            checked.contains(&(path.to_owned(), method.to_owned())),
            "{method} {path} was not checked: {checked:?}"
        );
    }
}
