//! The HTTP routes of a server's methods, read from their `google.api.http`
//! annotations (AIP-127), and the matcher that finds the route of a request.
//!
//! A path template is `/`-separated segments: literals, `*` (one segment),
//! `**` (the rest), and variables `{field}` or `{field=pattern}` that bind a
//! request field to part of the path; it may end with a custom verb
//! (`:undelete`). Matching is segment by segment on the percent-decoded path.

use http::Method;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};

/// Where a request's body goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyTarget {
    /// No body: every field comes from the path and the query.
    None,
    /// The whole request message (`body: "*"`).
    Whole,
    /// One field of the request message (`body: "case"`).
    Field(String),
}

/// One segment of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Any,
    /// `**`: every remaining segment (at least one).
    Rest,
}

/// A variable: the request field it binds and the segments it spans.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Variable {
    field: String,
    start: usize,
    end: usize,
}

/// A parsed path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

/// Why a template does not parse (a contract bug: the build's tests catch it).
#[derive(Debug, thiserror::Error)]
#[error("invalid path template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: &'static str,
}

impl PathTemplate {
    /// Parses `template`, e.g. `/v1/{name=cases/*}:undelete`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let error = |reason| TemplateError {
            template: template.to_owned(),
            reason,
        };
        let path = template
            .strip_prefix('/')
            .ok_or(error("must start with /"))?;
        // A verb follows the last `:` outside braces.
        let (path, verb) = match path.rfind(':') {
            Some(at) if !path[at..].contains('}') => (&path[..at], Some(path[at + 1..].to_owned())),
            _ => (path, None),
        };
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        let mut rest = path;
        while !rest.is_empty() {
            if let Some(inner) = rest.strip_prefix('{') {
                let close = inner.find('}').ok_or(error("unclosed {"))?;
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((field, pattern)) => (field, pattern),
                    None => (&inner[..close], "*"),
                };
                let start = segments.len();
                for part in pattern.split('/') {
                    segments.push(segment(part).ok_or(error("empty segment"))?);
                }
                variables.push(Variable {
                    field: field.to_owned(),
                    start,
                    end: segments.len(),
                });
                rest = inner[close + 1..]
                    .strip_prefix('/')
                    .unwrap_or(&inner[close + 1..]);
            } else {
                let (part, after) = rest.split_once('/').unwrap_or((rest, ""));
                segments.push(segment(part).ok_or(error("empty segment"))?);
                rest = after;
            }
        }
        if segments
            .iter()
            .rev()
            .skip(1)
            .any(|segment| *segment == Segment::Rest)
        {
            return Err(error("** must be last"));
        }
        Ok(Self {
            segments,
            variables,
            verb,
        })
    }

    /// The field values `path` binds, or `None` when it does not match.
    /// `path` is the request's path, still percent-encoded.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let path = path.strip_prefix('/')?;
        // A `:verb` ends the last segment; an encoded colon (%3A) is data.
        let (path, verb) = match path.rsplit_once(':') {
            Some((path, verb)) if !verb.contains('/') => (path, Some(verb)),
            _ => (path, None),
        };
        if verb != self.verb.as_deref() {
            return None;
        }
        let parts: Vec<String> = path
            .split('/')
            .map(|part| {
                percent_encoding::percent_decode_str(part)
                    .decode_utf8()
                    .map(|decoded| decoded.into_owned())
            })
            .collect::<Result<_, _>>()
            .ok()?;
        if parts.iter().any(String::is_empty) {
            return None;
        }
        // Where each template segment's span of request segments starts.
        let mut spans = Vec::with_capacity(self.segments.len() + 1);
        let mut at = 0;
        for segment in &self.segments {
            spans.push(at);
            match segment {
                Segment::Literal(literal) => {
                    if parts.get(at) != Some(literal) {
                        return None;
                    }
                    at += 1;
                }
                Segment::Any => {
                    parts.get(at)?;
                    at += 1;
                }
                Segment::Rest => {
                    if at >= parts.len() {
                        return None;
                    }
                    at = parts.len();
                }
            }
        }
        spans.push(at);
        if at != parts.len() {
            return None;
        }
        Some(
            self.variables
                .iter()
                .map(|variable| {
                    let (from, to) = (spans[variable.start], spans[variable.end]);
                    (variable.field.clone(), parts[from..to].join("/"))
                })
                .collect(),
        )
    }

    /// The request fields the path binds.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.field.as_str())
    }

    /// The template as an OpenAPI path: literals kept, each variable's
    /// wildcards replaced by `{field}` parameters (see [`Self::parameters`]).
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        let mut index = 0;
        while index < self.segments.len() {
            out.push('/');
            match self
                .variables
                .iter()
                .find(|v| v.start <= index && index < v.end)
            {
                Some(variable) => {
                    let wildcard = self.segments[variable.start..variable.end]
                        .iter()
                        .position(|s| !matches!(s, Segment::Literal(_)));
                    let mut parts = Vec::new();
                    for (offset, segment) in self.segments[variable.start..variable.end]
                        .iter()
                        .enumerate()
                    {
                        match segment {
                            Segment::Literal(literal) => parts.push(literal.clone()),
                            _ if Some(offset) == wildcard => {
                                parts.push(format!("{{{}}}", parameter_name(&variable.field)));
                            }
                            _ => parts
                                .push(format!("{{{}_{offset}}}", parameter_name(&variable.field))),
                        }
                    }
                    out.push_str(&parts.join("/"));
                    index = variable.end;
                }
                None => {
                    match &self.segments[index] {
                        Segment::Literal(literal) => out.push_str(literal),
                        _ => out.push_str(&format!("{{segment_{index}}}")),
                    }
                    index += 1;
                }
            }
        }
        if let Some(verb) = &self.verb {
            out.push(':');
            out.push_str(verb);
        }
        out
    }

    /// The OpenAPI path parameters of [`Self::openapi_path`]: the
    /// parameter's name, the field it fills and that field's pattern.
    pub fn parameters(&self) -> Vec<(String, String, String)> {
        let path = self.openapi_path();
        self.variables
            .iter()
            .map(|variable| {
                let pattern = self.segments[variable.start..variable.end]
                    .iter()
                    .map(|s| match s {
                        Segment::Literal(literal) => literal.clone(),
                        Segment::Any => "*".to_owned(),
                        Segment::Rest => "**".to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                let name = parameter_name(&variable.field).to_owned();
                (name, variable.field.clone(), pattern)
            })
            .filter(|(name, _, _)| path.contains(&format!("{{{name}}}")))
            .collect()
    }
}

/// A path parameter's name: the last part of the field path it fills
/// (`case.name` → `name`), so every route of one resource shares one
/// OpenAPI path (`/v1/cases/{name}`).
fn parameter_name(field: &str) -> &str {
    field.rsplit('.').next().unwrap_or(field)
}

fn segment(part: &str) -> Option<Segment> {
    match part {
        "" => None,
        "*" => Some(Segment::Any),
        "**" => Some(Segment::Rest),
        literal => Some(Segment::Literal(literal.to_owned())),
    }
}

/// One HTTP binding of a method.
#[derive(Clone, Debug)]
pub struct Route {
    /// The method it reaches.
    pub method: MethodDescriptor,
    /// The HTTP verb.
    pub verb: Method,
    /// The path template.
    pub template: PathTemplate,
    /// Where the body goes.
    pub body: BodyTarget,
}

impl Route {
    /// `/package.Service/Method`: the gRPC path the route calls.
    pub fn grpc_path(&self) -> String {
        grpc_path(&self.method)
    }
}

/// `/package.Service/Method` of `method`.
pub fn grpc_path(method: &MethodDescriptor) -> String {
    format!("/{}/{}", method.parent_service().full_name(), method.name())
}

/// What a request's verb and path found.
#[derive(Debug)]
pub enum Found<'a> {
    /// A route, with the field values its path binds.
    Route(&'a Route, Vec<(String, String)>),
    /// The path exists for other verbs only (for `405` and `Allow`).
    OtherVerbs(Vec<Method>),
    /// No route has this path.
    Nothing,
}

/// Every route of a server.
#[derive(Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
}

/// An annotation that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A path template does not parse.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The rule names no verb, or a verb HTTP does not have.
    #[error("{method}: the google.api.http rule has no usable verb")]
    Verb {
        /// The method's full name.
        method: String,
    },
}

impl Routes {
    /// The routes of every method of `services` in `pool`.
    pub fn new(pool: &DescriptorPool, services: &[&str]) -> Result<Self, RouteError> {
        let mut routes = Vec::new();
        let Some(http) = pool.get_extension_by_name("google.api.http") else {
            return Ok(Self { routes });
        };
        for service in pool.services() {
            if !services.contains(&service.full_name()) {
                continue;
            }
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let rule = options.get_extension(&http);
                let Some(rule) = rule.as_message() else {
                    continue;
                };
                routes.push(route(&method, rule)?);
                if let Some(Value::List(more)) =
                    rule.get_field_by_name("additional_bindings").as_deref()
                {
                    for binding in more.iter().filter_map(Value::as_message) {
                        routes.push(route(&method, binding)?);
                    }
                }
            }
        }
        Ok(Self { routes })
    }

    /// Every route, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The route for `verb` and `path` (percent-encoded).
    pub fn find(&self, verb: &Method, path: &str) -> Found<'_> {
        let mut other_verbs = Vec::new();
        for route in &self.routes {
            if let Some(bindings) = route.template.matches(path) {
                if route.verb == verb {
                    return Found::Route(route, bindings);
                }
                if !other_verbs.contains(&route.verb) {
                    other_verbs.push(route.verb.clone());
                }
            }
        }
        if other_verbs.is_empty() {
            Found::Nothing
        } else {
            Found::OtherVerbs(other_verbs)
        }
    }
}

fn route(method: &MethodDescriptor, rule: &DynamicMessage) -> Result<Route, RouteError> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|value| value.as_str().map(str::to_owned))
            .filter(|text| !text.is_empty())
    };
    let simple = [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ];
    let custom = rule
        .get_field_by_name("custom")
        .and_then(|value| value.as_message().cloned())
        .and_then(|custom| {
            let kind = custom.get_field_by_name("kind")?.as_str()?.to_owned();
            let path = custom.get_field_by_name("path")?.as_str()?.to_owned();
            Some((Method::from_bytes(kind.as_bytes()).ok()?, path))
        });
    let (verb, path) = simple
        .into_iter()
        .find_map(|(name, verb)| rule.has_field_by_name(name).then(|| (verb, text(name))))
        .and_then(|(verb, path)| Some((verb, path?)))
        .or(custom)
        .ok_or_else(|| RouteError::Verb {
            method: method.full_name().to_owned(),
        })?;
    let body = match text("body").as_deref() {
        None => BodyTarget::None,
        Some("*") => BodyTarget::Whole,
        Some(field) => BodyTarget::Field(field.to_owned()),
    };
    Ok(Route {
        method: method.clone(),
        verb,
        template: PathTemplate::parse(&path)?,
        body,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn bound(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        PathTemplate::parse(template).unwrap().matches(path)
    }

    #[test]
    fn variables_bind_their_segments_and_verbs_must_match() {
        let pairs = |list: &[(&str, &str)]| {
            Some(
                list.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            bound("/v1/{name=cases/*}", "/v1/cases/abc"),
            pairs(&[("name", "cases/abc")])
        );
        assert_eq!(bound("/v1/cases", "/v1/cases"), pairs(&[]));
        assert_eq!(
            bound("/v1/{name=cases/*}:undelete", "/v1/cases/abc:undelete"),
            pairs(&[("name", "cases/abc")])
        );
        assert_eq!(bound("/v1/{name=cases/*}:undelete", "/v1/cases/abc"), None);
        assert_eq!(bound("/v1/{name=cases/*}", "/v1/cases/abc:undelete"), None);
        assert_eq!(bound("/v1/{name=cases/*}", "/v1/cases/a/b"), None);
        assert_eq!(bound("/v1/{name=cases/*}", "/v1/cases/"), None);
        assert_eq!(
            bound("/v1/{path=files/**}", "/v1/files/a/b/c"),
            pairs(&[("path", "files/a/b/c")])
        );
        assert_eq!(
            bound("/v1/{name=cases/*}", "/v1/cases/a%2Fb"),
            pairs(&[("name", "cases/a/b")]),
            "an encoded slash is data, and the handler judges the name"
        );
        assert_eq!(bound("/api/auth/me", "/api/auth/me"), pairs(&[]));
    }

    #[test]
    fn openapi_paths_name_each_wildcard_after_its_field() {
        let template = PathTemplate::parse("/v1/{name=cases/*}:undelete").unwrap();
        assert_eq!(template.openapi_path(), "/v1/cases/{name}:undelete");
        assert_eq!(
            template.parameters(),
            vec![("name".to_owned(), "name".to_owned(), "cases/*".to_owned())]
        );
        let update = PathTemplate::parse("/v1/{case.name=cases/*}").unwrap();
        assert_eq!(update.openapi_path(), "/v1/cases/{name}");
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in ["v1/x", "/v1/{name", "/v1//x", "/v1/**/x"] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_path_either_matches_with_its_segments_or_does_not_and_never_panics(
            segments in proptest::collection::vec("[a-z0-9%:._~-]{0,12}", 0..6),
        ) {
            let path = format!("/{}", segments.join("/"));
            let template = PathTemplate::parse("/v1/{name=cases/*}:undelete").unwrap();
            if let Some(bindings) = template.matches(&path) {
                prop_assert_eq!(bindings.len(), 1);
                prop_assert!(bindings[0].1.starts_with("cases/"));
                prop_assert!(path.starts_with("/v1/cases/") && path.ends_with(":undelete"));
            }
            let plain = PathTemplate::parse("/v1/{name=cases/*}").unwrap();
            if let Some(bindings) = plain.matches(&path) {
                prop_assert_eq!(segments.len(), 3);
                prop_assert_eq!(&bindings[0].1[..6], "cases/");
            }
        }
    }
}
