//! The request collection users import (`requests/books.http`) runs as
//! written against a test system, each request answering the status its
//! `# @expect` line states, and it exercises every route of both OpenAPI
//! documents.

use std::collections::HashMap;

use serde_json::Value;

use crate::helpers::{spawn_system, TOKEN};

const COLLECTION: &str = include_str!("../../requests/books.http");

/// One request of the collection.
#[derive(Debug)]
struct Request {
    title: String,
    name: Option<String>,
    expect: u16,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: String,
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
    let (mut name, mut expect, mut request_line) = (None, None, None);
    for line in lines.by_ref() {
        let line = line.trim();
        if let Some(comment) = line.strip_prefix('#').or_else(|| line.strip_prefix("//")) {
            let comment = comment.trim();
            if let Some(value) = comment.strip_prefix("@name") {
                name = Some(value.trim().to_owned());
            } else if let Some(value) = comment.strip_prefix("@expect") {
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
    let body = lines.collect::<Vec<_>>().join("\n").trim().to_owned();
    Request {
        expect: expect.unwrap_or_else(|| panic!("no `# @expect` in {title:?}")),
        title,
        name,
        method,
        url,
        headers,
        body,
    }
}

/// An earlier answer, for `{{name.response...}}` references.
struct Answer {
    headers: reqwest::header::HeaderMap,
    body: Value,
}

/// Replaces every `{{...}}` in `text`: a variable, or
/// `name.response.body.$.a.b` / `name.response.headers.Name` of an earlier
/// answer.
fn substitute(
    text: &str,
    variables: &HashMap<String, String>,
    answers: &HashMap<String, Answer>,
) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("a closing }}") + start;
        let expression = rest[start + 2..end].trim();
        out.push_str(&resolve(expression, variables, answers));
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

fn resolve(
    expression: &str,
    variables: &HashMap<String, String>,
    answers: &HashMap<String, Answer>,
) -> String {
    if let Some(value) = variables.get(expression) {
        return value.clone();
    }
    let (name, path) = expression
        .split_once(".response.")
        .unwrap_or_else(|| panic!("unknown variable {expression}"));
    let answer = answers
        .get(name)
        .unwrap_or_else(|| panic!("no earlier answer named {name}"));
    if let Some(header) = path.strip_prefix("headers.") {
        return answer.headers[header]
            .to_str()
            .expect("a text header")
            .to_owned();
    }
    let pointer = path
        .strip_prefix("body.$.")
        .unwrap_or_else(|| panic!("unsupported reference {expression}"));
    let value = pointer
        .split('.')
        .fold(&answer.body, |value, key| &value[key]);
    match value {
        Value::String(text) => text.clone(),
        Value::Null => panic!("{expression} is null in the earlier answer"),
        other => other.to_string(),
    }
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
    let mut answers = HashMap::new();
    let mut sent = Vec::new();

    for request in &requests {
        let url = substitute(&request.url, &variables, &answers);
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).expect("a method");
        let mut builder = http.request(method, &url);
        for (name, value) in &request.headers {
            builder = builder.header(name, substitute(value, &variables, &answers));
        }
        if !request.body.is_empty() {
            builder = builder.body(substitute(&request.body, &variables, &answers));
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
        if let Some(name) = &request.name {
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            answers.insert(name.clone(), Answer { headers, body });
        }
        sent.push((request.method.clone(), url));
    }

    for (base, document) in [
        (&system.command_url, command_service::routes::openapi()),
        (&system.query_url, query_service::routes::openapi()),
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
fn templates_match_concrete_paths_only() {
    assert!(matches_template("/books/{id}", "/books/abc"));
    assert!(!matches_template("/books/{id}", "/books/"));
    assert!(!matches_template("/books/{id}", "/books"));
    assert!(!matches_template("/books", "/authors"));
    assert!(matches_template("/books", "/books"));
}
