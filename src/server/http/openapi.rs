//! The OpenAPI document of every HTTP route (`GET /openapi.json`, committed as
//! docs/openapi.json), built with utoipa: the OpenAI routes' schemas derived from the types
//! that serve them, dlm's own from the tables in [`schemas`](super::schemas).

use std::sync::OnceLock;

use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, PathItem, PathsBuilder};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ComponentsBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, Required};

use super::completion::{Choice, Completion, Usage};
use super::completions::CompletionRequest;
use super::errors::{OpenAiError, OpenAiErrorBody};
use super::fields::DlmFields;
use super::models::{ModelList, ModelObject};
use super::schemas;

const JSON: &str = "application/json";

/// The document as `GET /openapi.json` serves it (pretty JSON, built once).
pub(super) fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| openapi().to_pretty_json().unwrap_or_default())
}

/// A response of `schema` (a component's name) as `content_type`.
fn response(description: &str, content_type: &str, schema: &str) -> ResponseBuilder {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name(schema))).build();
    ResponseBuilder::new().description(description).content(content_type, content)
}

/// A response: its status, description, content type and schema (a component's name).
type Outcome = (&'static str, &'static str, &'static str, &'static str);

/// An operation: its summary, its request body's schema (JSON), its responses, and the
/// optional bearer key unless `open`.
fn operation(summary: &str, request: Option<&str>, responses: &[Outcome], open: bool) -> Operation {
    let mut op = OperationBuilder::new().summary(Some(summary));
    if let Some(schema) = request {
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name(schema))).build();
        op = op.request_body(Some(
            RequestBodyBuilder::new().content(JSON, content).required(Some(Required::True)).build(),
        ));
    }
    for (status, description, content, schema) in responses {
        op = op.response(*status, response(description, content, schema).build());
    }
    if !open {
        // the key is needed only when the server runs with --api-key
        op = op.securities(Some([
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::default(),
        ]));
    }
    op.build()
}

/// `op`, its 200 also `text/event-stream` of events whose data is `events` (a component's name),
/// as a request that asks for a stream is answered.
fn streams(mut op: Operation, events: &str) -> Operation {
    if let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200") {
        let content = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(events)))
            .description(Some("With stream true: Server-Sent Events, each event's data one of these"))
            .build();
        ok.content.insert("text/event-stream".into(), RefOr::T(content));
    }
    op
}

/// The error statuses of a generate request, each in `error` (a component's name).
fn errors(error: &'static str) -> [Outcome; 8] {
    [
        ("400", "bad_request: not JSON, an unknown field, a wrong type", JSON, error),
        ("401", "unauthorized: without the server's --api-key", JSON, error),
        ("413", "too_large: a body over --max-line", JSON, error),
        ("422", "invalid_argument: a value the model or server does not allow", JSON, error),
        ("429", "busy: the queue is full (Retry-After: 1)", JSON, error),
        ("503", "shutting_down, or loading", JSON, error),
        ("504", "timeout: the deadline passed", JSON, error),
        ("500", "internal: ONNX Runtime failed", JSON, error),
    ]
}

fn openapi() -> OpenApi {
    let unauthorized = ("401", "unauthorized: without the server's --api-key", JSON, "Error");
    let generate = operation(
        "Generate sentences: the line protocol's request object in, its response object out (with stream: \
         event: step with a StepEvent ..., then event: done with the answer or event: error)",
        Some("GenerateRequest"),
        &[&[("200", "the sentences", JSON, "GenerateAnswer")][..], &errors("Error")].concat(),
        false,
    );
    let generate = streams(generate, "StepEvent");
    let health = operation(
        "Health for probes: 200 serving; 503 loading, draining or with the inference thread dead",
        None,
        &[("200", "serving", JSON, "Health"), ("503", "loading, draining, or the engine dead", JSON, "Health")],
        true,
    );
    let info = operation(
        "The version, the model, its graphs' sha256 and every control's labels",
        None,
        &[("200", "info", JSON, "Info"), unauthorized],
        false,
    );
    let metrics = operation(
        "Prometheus metrics",
        None,
        &[("200", "the metrics", "application/openmetrics-text", "Metrics"), unauthorized],
        false,
    );
    let openai_unauthorized = ("401", "unauthorized: without the server's --api-key", JSON, "OpenAiError");
    let models = operation(
        "OpenAI: the model served",
        None,
        &[("200", "the list", JSON, "ModelList"), openai_unauthorized],
        false,
    );
    let not_found = ("404", "no such model", JSON, "OpenAiError");
    let model = operation(
        "OpenAI: the model, when the id is its id",
        None,
        &[("200", "the model", JSON, "ModelObject"), not_found, openai_unauthorized],
        false,
    );
    let completions = operation(
        "OpenAI: complete a prompt (a left context or an infill template) through the same engine (with stream: \
         OpenAI's chunks, then data: [DONE])",
        Some("CompletionRequest"),
        &[&[("200", "the completions", JSON, "Completion"), not_found][..], &errors("OpenAiError")].concat(),
        false,
    );
    let completions = streams(completions, "CompletionChunk");
    let document = operation(
        "This document",
        None,
        &[("200", "the OpenAPI document", JSON, "OpenApiDocument"), unauthorized],
        false,
    );
    let paths = PathsBuilder::new()
        .path("/v1/generate", PathItem::new(HttpMethod::Post, generate))
        .path("/health", PathItem::new(HttpMethod::Get, health))
        .path("/v1/info", PathItem::new(HttpMethod::Get, info))
        .path("/metrics", PathItem::new(HttpMethod::Get, metrics))
        .path("/v1/models", PathItem::new(HttpMethod::Get, models))
        .path("/v1/models/{id}", PathItem::new(HttpMethod::Get, model))
        .path("/v1/completions", PathItem::new(HttpMethod::Post, completions))
        .path("/openapi.json", PathItem::new(HttpMethod::Get, document));
    let bearer = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .description(Some(
            "With `dlm serve --api-key KEY` (DLM_API_KEY): `Authorization: Bearer KEY`; no key otherwise",
        ))
        .build();
    let components = ComponentsBuilder::new()
        .schema_from::<CompletionRequest>()
        .schema_from::<DlmFields>()
        .schema_from::<Completion>()
        .schema_from::<Choice>()
        .schema_from::<Usage>()
        .schema_from::<ModelList>()
        .schema_from::<ModelObject>()
        .schema_from::<OpenAiError>()
        .schema_from::<OpenAiErrorBody>()
        .schemas_from_iter(schemas::dlm())
        .schema("Metrics", ObjectBuilder::new().schema_type(Type::String).description(Some("OpenMetrics text")))
        .schema("OpenApiDocument", ObjectBuilder::new().description(Some("An OpenAPI 3.1 document")))
        .security_scheme("bearer", SecurityScheme::Http(bearer))
        .build();
    let info = InfoBuilder::new()
        .title("dlm serve")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some("Diffusion-LM text generation with controls over HTTP: dlm's routes and OpenAI-compatible ones (docs/serve.md)"))
        .build();
    OpenApiBuilder::new().info(info).paths(paths).components(Some(components)).build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::ToSchema;

    /// Every `$ref` names a component: the document is whole.
    #[test]
    fn every_reference_resolves() {
        let document: serde_json::Value = serde_json::from_str(document()).unwrap();
        let text = document.to_string();
        let schemas = document["components"]["schemas"].as_object().unwrap();
        let mut refs = text.match_indices("#/components/schemas/").map(|(at, m)| {
            let name = &text[at + m.len()..];
            name[..name.find('"').unwrap()].to_string()
        });
        assert!(refs.all(|name| schemas.contains_key(&name)));
        assert_eq!(document["paths"].as_object().unwrap().len(), 8);
        assert_eq!(CompletionRequest::name(), "CompletionRequest");
    }
}
