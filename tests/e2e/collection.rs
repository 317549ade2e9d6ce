//! The request collection users import (`requests/books.http`) runs as
//! written against a test system, each request answering the status its
//! `# @expect` line states, and it exercises every route of both OpenAPI
//! documents.
//!
//! The runner understands the part of the JetBrains HTTP Client format the
//! collection uses: `@name = value` variables, `{{name}}` references, and
//! response handlers made of `client.global.set("name", <value>);` with
//! `response.body.<path>` or `response.headers.valueOf("<name>")`.

use std::collections::HashMap;

use serde_json::Value;

use crate::helpers::{spawn_system, TOKEN};

const COLLECTION: &str = include_str!("../../requests/books.http");

/// One request of the collection.
#[derive(Debug)]
struct Request {
    title: String,
    expect: u16,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: String,
    /// What the response handler keeps: (variable, expression).
    keeps: Vec<(String, String)>,
}

/// The file's variables (`@name = value`) and its requests, in order.
fn parse(text: &str) -> (HashMap<String, String>, Vec<Request>) {
    let mut blocks = text.split("\n###");
    let preamble = blocks.next().unwrap_or_default();
    let variables = preamble
        .lines()
        .filter_map(|line| line.strip_prefix('@'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let requests = blocks.map(parse_request).collect();
    (variables, requests)
}

fn parse_request(block: &str) -> Request {
    let mut lines = block.lines();
    let title = lines.next().unwrap_or_default().trim().to_owned();
    let (mut expect, mut request_line) = (None, None);
    for line in lines.by_ref() {
        let line = line.trim();
        if let Some(comment) = line.strip_prefix('#').or_else(|| line.strip_prefix("//")) {
            if let Some(value) = comment.trim().strip_prefix("@expect") {
                expect = Some(value.trim().parse().expect("a status after @expect"));
            }
        } else if !line.is_empty() {
            request_line = Some(line.to_owned());
            break;
        }
    }
    let request_line = request_line.unwrap_or_else(|| panic!("no request in {title:?}"));
    let mut parts = request_line.split_whitespace();
    let method = parts.next().expect("a method").to_owned();
    let url = parts.next().expect("a URL").to_owned();
    let headers = lines
        .by_ref()
        .take_while(|line| !line.trim().is_empty())
        .map(|line| {
            let (name, value) = line.split_once(':').expect("a `Name: value` header");
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    let rest = lines.collect::<Vec<_>>().join("\n");
    let (body, handler) = match rest.split_once("> {%") {
        Some((body, handler)) => (body, handler.split("%}").next().unwrap_or_default()),
        None => (rest.as_str(), ""),
    };
    Request {
        expect: expect.unwrap_or_else(|| panic!("no `# @expect` in {title:?}")),
        title,
        method,
        url,
        headers,
        body: body.trim().to_owned(),
        keeps: parse_handler(handler),
    }
}

/// The `client.global.set("name", <expression>);` statements of a handler.
fn parse_handler(handler: &str) -> Vec<(String, String)> {
    handler
        .split(';')
        .map(str::trim)
        .filter(|statement| !statement.is_empty())
        .map(|statement| {
            let arguments = statement
                .strip_prefix("client.global.set(")
                .and_then(|rest| rest.strip_suffix(')'))
                .unwrap_or_else(|| panic!("unsupported handler statement {statement:?}"));
            let (name, expression) = arguments.split_once(',').expect("two arguments");
            (unquote(name), expression.trim().to_owned())
        })
        .collect()
}

fn unquote(text: &str) -> String {
    text.trim().trim_matches('"').to_owned()
}

/// The value of a handler expression over an answer.
fn evaluate(expression: &str, headers: &reqwest::header::HeaderMap, body: &Value) -> String {
    if let Some(name) = expression
        .strip_prefix("response.headers.valueOf(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        let name = unquote(name);
        return headers[name.as_str()]
            .to_str()
            .expect("a text header")
            .to_owned();
    }
    let path = expression
        .strip_prefix("response.body.")
        .unwrap_or_else(|| panic!("unsupported expression {expression}"));
    match path.split('.').fold(body, |value, key| &value[key]) {
        Value::String(text) => text.clone(),
        Value::Null => panic!("{expression} is null in the answer"),
        other => other.to_string(),
    }
}

/// Replaces every `{{name}}` in `text` with its variable.
fn substitute(text: &str, variables: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("a closing }}") + start;
        let name = rest[start + 2..end].trim();
        let value = variables
            .get(name)
            .unwrap_or_else(|| panic!("no variable {name} is set before it is used"));
        out.push_str(value);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Whether `path` (no query) is an instance of the OpenAPI `template`.
fn matches_template(template: &str, path: &str) -> bool {
    let template: Vec<&str> = template.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    template.len() == path.len()
        && template
            .iter()
            .zip(&path)
            .all(|(t, p)| (t.starts_with('{') && !p.is_empty()) || t == p)
}

/// Every (method, path template) an OpenAPI document lists.
fn operations(document: &utoipa::openapi::OpenApi) -> Vec<(String, String)> {
    let json = serde_json::to_value(document).expect("a document");
    let mut operations = Vec::new();
    for (path, item) in json["paths"].as_object().expect("paths") {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                operations.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    operations
}

#[tokio::test]
async fn the_request_collection_runs_as_written_and_covers_every_route() {
    let system = spawn_system().await;
    let (mut variables, requests) = parse(COLLECTION);
    variables.insert("command".into(), system.command_url.clone());
    variables.insert("query".into(), system.query_url.clone());
    variables.insert("token".into(), TOKEN.into());
    // A plain client: the collection's own headers are all that is sent.
    let http = reqwest::Client::new();
    let mut sent = Vec::new();

    for request in &requests {
        let url = substitute(&request.url, &variables);
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).expect("a method");
        let mut builder = http.request(method, &url);
        for (name, value) in &request.headers {
            builder = builder.header(name, substitute(value, &variables));
        }
        if !request.body.is_empty() {
            builder = builder.body(substitute(&request.body, &variables));
        }
        let response = builder.send().await.expect("the request is answered");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        assert_eq!(
            status, request.expect,
            "{:?} ({} {url}) answered {text}",
            request.title, request.method
        );
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        for (name, expression) in &request.keeps {
            variables.insert(name.clone(), evaluate(expression, &headers, &body));
        }
        sent.push((request.method.clone(), url));
    }

    for (base, document) in [
        (&system.command_url, command_service::routes::openapi()),
        (&system.query_url, query_service::read::openapi()),
    ] {
        for (method, template) in operations(&document) {
            let covered = sent.iter().any(|(sent_method, url)| {
                let path = url
                    .strip_prefix(base.as_str())
                    .map(|rest| rest.split('?').next().unwrap_or_default());
                *sent_method == method && path.is_some_and(|p| matches_template(&template, p))
            });
            assert!(
                covered,
                "the collection never calls {method} {base}{template}"
            );
        }
    }
}

#[test]
fn handlers_keep_body_fields_and_headers() {
    let keeps = parse_handler(
        r#"
  client.global.set("id", response.body._id);
  client.global.set("etag", response.headers.valueOf("ETag"));
"#,
    );
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("etag", "\"3\"".parse().unwrap());
    let body = serde_json::json!({ "_id": "abc", "version": 3 });
    let values: Vec<String> = keeps
        .iter()
        .map(|(_, expression)| evaluate(expression, &headers, &body))
        .collect();
    assert_eq!(keeps[0].0, "id");
    assert_eq!(values, ["abc", "\"3\""]);
}

#[test]
fn templates_match_concrete_paths_only() {
    assert!(matches_template("/books/{id}", "/books/abc"));
    assert!(!matches_template("/books/{id}", "/books/"));
    assert!(!matches_template("/books/{id}", "/books"));
    assert!(!matches_template("/books", "/authors"));
    assert!(matches_template("/books", "/books"));
}
