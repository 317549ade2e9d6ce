//! `/openapi.json`: every route, with every answer it can give.

use serde_json::Value;

use crate::helpers::spawn_app;

async fn document() -> Value {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn statuses(doc: &Value, path: &str) -> Vec<String> {
    let mut statuses: Vec<String> = doc["paths"][path]["get"]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("GET {path} is documented"))
        .keys()
        .cloned()
        .collect();
    statuses.sort();
    statuses
}

fn parameters(doc: &Value, path: &str) -> Vec<String> {
    doc["paths"][path]["get"]["parameters"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn every_read_route_documents_each_status_it_answers() {
    let doc = document().await;

    assert_eq!(statuses(&doc, "/books"), ["200", "400", "500", "503"]);
    assert_eq!(
        statuses(&doc, "/books/{id}"),
        ["200", "400", "404", "500", "503"]
    );
    assert_eq!(
        statuses(&doc, "/authors/{author}"),
        ["200", "400", "404", "500", "503"]
    );
    assert_eq!(
        parameters(&doc, "/books"),
        ["author", "year", "yearFrom", "yearTo", "title", "sort", "limit", "cursor"]
    );
    assert_eq!(parameters(&doc, "/books/{id}"), ["id", "minVersion"]);
    let sort = &doc["paths"]["/books"]["get"]["parameters"][5]["schema"];
    assert!(sort.to_string().contains("-publishedYear"), "{sort}");
}

#[tokio::test]
async fn every_response_has_a_description_and_problems_are_problem_json() {
    let doc = document().await;

    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let at = format!("{method} {path} {status}");
                assert!(
                    response["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{at} has no description"
                );
                let is_problem = status.starts_with('4')
                    || (status.starts_with('5') && !path.starts_with("/readyz"));
                if is_problem {
                    assert!(
                        response["content"]
                            .get("application/problem+json")
                            .is_some(),
                        "{at} is not problem+json"
                    );
                }
            }
        }
    }
}
