//! Route path patterns (`/orders/{id}`, `/files/{path+}`) and integration templates
//! (`http://${stageVariables.backend}/orders/{id}`), parsed once and rendered per request.

use crate::{Error, Result};

/// One segment of a route path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Literal(String),
    /// `{name}`: exactly one segment.
    Param(String),
    /// `{name+}`: the greedy rest of the path; only as the last segment.
    Greedy(String),
}

fn valid_param_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses and validates a route path pattern. `field` names the field in errors.
pub fn parse_path(field: &str, path: &str) -> Result<Vec<PathSegment>> {
    if !path.starts_with('/') {
        return Err(Error::invalid(field, path, "must start with /"));
    }
    if path.len() > 1024 {
        return Err(Error::invalid(field, path, "must be at most 1024 characters"));
    }
    let mut out = Vec::new();
    let body = &path[1..];
    if body.is_empty() {
        return Ok(out);
    }
    let parts: Vec<&str> = body.split('/').collect();
    let mut names = Vec::new();
    for (i, seg) in parts.iter().enumerate() {
        if seg.is_empty() {
            return Err(Error::invalid(field, path, "must not contain empty segments or end with /"));
        }
        if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (name, greedy) = match inner.strip_suffix('+') {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if !valid_param_name(name) {
                return Err(Error::invalid(
                    field,
                    path,
                    format!("parameter {seg} must be {{name}} or {{name+}} with name [A-Za-z0-9_]+"),
                ));
            }
            if names.contains(&name) {
                return Err(Error::invalid(field, path, format!("parameter {name} appears twice")));
            }
            names.push(name);
            if greedy {
                if i + 1 != parts.len() {
                    return Err(Error::invalid(
                        field,
                        path,
                        format!("greedy parameter {seg} must be the last segment"),
                    ));
                }
                out.push(PathSegment::Greedy(name.to_string()));
            } else {
                out.push(PathSegment::Param(name.to_string()));
            }
        } else {
            if seg.contains(['{', '}']) {
                return Err(Error::invalid(field, path, format!("segment {seg} mixes text and a parameter")));
            }
            if !seg.chars().all(|c| c.is_ascii_graphic() && c != '?' && c != '#') {
                return Err(Error::invalid(
                    field,
                    path,
                    format!("segment {seg} has characters not allowed in a path"),
                ));
            }
            out.push(PathSegment::Literal((*seg).to_string()));
        }
    }
    Ok(out)
}

/// The shape of a path with parameter names erased: two routes with the same shape but different
/// parameter names would be ambiguous.
pub fn path_shape(segments: &[PathSegment]) -> String {
    let mut s = String::new();
    for seg in segments {
        s.push('/');
        match seg {
            PathSegment::Literal(l) => s.push_str(l),
            PathSegment::Param(_) => s.push_str("{}"),
            PathSegment::Greedy(_) => s.push_str("{+}"),
        }
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// One piece of an integration template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    /// `${stageVariables.name}`
    StageVariable(String),
    /// `{name}` or `{name+}`: a path parameter of the matched route.
    PathParam(String),
}

/// A parsed integration template (URI or mock body).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pub parts: Vec<Part>,
}

impl Template {
    /// Parses `${stageVariables.x}` references and, when `path_params` is true, `{param}` references.
    pub fn parse(field: &str, text: &str, path_params: bool) -> Result<Template> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("${") {
                let end = after.find('}').ok_or_else(|| Error::invalid(field, text, "unclosed ${"))?;
                let expr = &after[..end];
                let name = expr
                    .strip_prefix("stageVariables.")
                    .ok_or_else(|| Error::invalid(field, text, format!("${{{expr}}} is not a ${{stageVariables.name}} reference")))?;
                if !valid_param_name(name) {
                    return Err(Error::invalid(
                        field,
                        text,
                        format!("stage variable name {name:?} must be [A-Za-z0-9_]+"),
                    ));
                }
                if !lit.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut lit)));
                }
                parts.push(Part::StageVariable(name.to_string()));
                rest = &after[end + 1..];
            } else if path_params && rest.starts_with('{') {
                let end = rest.find('}').ok_or_else(|| Error::invalid(field, text, "unclosed {"))?;
                let inner = &rest[1..end];
                let name = inner.strip_suffix('+').unwrap_or(inner);
                if !valid_param_name(name) {
                    return Err(Error::invalid(
                        field,
                        text,
                        format!("path parameter {{{inner}}} must be {{name}} or {{name+}}"),
                    ));
                }
                if !lit.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut lit)));
                }
                parts.push(Part::PathParam(name.to_string()));
                rest = &rest[end + 1..];
            } else {
                let ch = rest.chars().next().expect("non-empty");
                lit.push(ch);
                rest = &rest[ch.len_utf8()..];
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Template { parts })
    }

    /// The template with every stage variable replaced by its value (`var`; a missing one by nothing,
    /// as [`Template::render_into`] renders it) and adjacent literals joined: what a stage's variables
    /// make of it, rendered the same for every request.
    pub fn bind_variables<'a>(&self, var: impl Fn(&str) -> Option<&'a str>) -> Template {
        let mut parts: Vec<Part> = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            let text = match p {
                Part::Literal(l) => l.as_str(),
                Part::StageVariable(n) => var(n).unwrap_or(""),
                Part::PathParam(_) => {
                    parts.push(p.clone());
                    continue;
                }
            };
            match parts.last_mut() {
                Some(Part::Literal(l)) => l.push_str(text),
                _ if text.is_empty() => {}
                _ => parts.push(Part::Literal(text.to_string())),
            }
        }
        Template { parts }
    }

    /// Whether the template refers to a stage variable.
    pub fn has_stage_variables(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::StageVariable(_)))
    }

    /// Path parameters the template refers to.
    pub fn path_params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::PathParam(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// Renders the template into `out`. Missing stage variables and parameters render as empty, as in
    /// API Gateway.
    pub fn render_into<'a>(&self, out: &mut String, var: impl Fn(&str) -> Option<&'a str>, param: impl Fn(&str) -> Option<&'a str>) {
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::StageVariable(n) => out.push_str(var(n).unwrap_or("")),
                Part::PathParam(n) => out.push_str(param(n).unwrap_or("")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_variables_render_as_the_template_does() {
        let t = Template::parse(
            "uri",
            "http://${stageVariables.host}:${stageVariables.port}/v/{proxy}?a=${stageVariables.none}",
            true,
        )
        .unwrap();
        assert!(t.has_stage_variables());
        let vars = |n: &str| match n {
            "host" => Some("backend.internal"),
            "port" => Some("8080"),
            _ => None,
        };
        let bound = t.bind_variables(vars);
        assert!(!bound.has_stage_variables());
        assert_eq!(
            bound.parts,
            vec![
                Part::Literal("http://backend.internal:8080/v/".into()),
                Part::PathParam("proxy".into()),
                Part::Literal("?a=".into()),
            ]
        );
        for param in ["", "x/y", "{proxy}"] {
            let (mut a, mut b) = (String::new(), String::new());
            t.render_into(&mut a, vars, |_| Some(param));
            bound.render_into(&mut b, |_| None, |_| Some(param));
            assert_eq!(a, b);
        }
        // A variable that is all of the template, and one that is empty between two parameters.
        let only = Template::parse("uri", "${stageVariables.url}", true).unwrap();
        assert_eq!(
            only.bind_variables(|_| Some("http://a/")).parts,
            vec![Part::Literal("http://a/".into())]
        );
        assert_eq!(only.bind_variables(|_| None).parts, vec![]);
        let gap = Template::parse("uri", "{a}${stageVariables.x}{b}", true).unwrap();
        assert_eq!(
            gap.bind_variables(|_| Some("")).parts,
            vec![Part::PathParam("a".into()), Part::PathParam("b".into())]
        );
    }

    #[test]
    fn parses_paths() {
        let s = parse_path("path", "/orders/{id}/items/{rest+}").unwrap();
        assert_eq!(
            s,
            vec![
                PathSegment::Literal("orders".into()),
                PathSegment::Param("id".into()),
                PathSegment::Literal("items".into()),
                PathSegment::Greedy("rest".into())
            ]
        );
        assert_eq!(path_shape(&s), "/orders/{}/items/{+}");
        assert_eq!(parse_path("path", "/").unwrap(), vec![]);
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in ["orders", "/a//b", "/a/", "/{x+}/b", "/a{x}", "/{x}/{x}", "/{}", "/{a-b}"] {
            let err = parse_path("routes[0].path", bad).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("routes[0].path") && msg.contains(bad), "{msg}");
        }
    }

    #[test]
    fn renders_templates() {
        let t = Template::parse("uri", "http://${stageVariables.backend}/orders/{id}?x={id}", true).unwrap();
        let mut out = String::new();
        t.render_into(
            &mut out,
            |n| (n == "backend").then_some("10.0.0.7:80"),
            |n| (n == "id").then_some("42"),
        );
        assert_eq!(out, "http://10.0.0.7:80/orders/42?x=42");
        assert_eq!(t.path_params().collect::<Vec<_>>(), vec!["id", "id"]);
        let body = Template::parse("body", r#"{"v":"${stageVariables.version}"}"#, false).unwrap();
        let mut out = String::new();
        body.render_into(&mut out, |_| Some("2"), |_| None);
        assert_eq!(out, r#"{"v":"2"}"#);
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(Template::parse("uri", "http://${backend}/", true).is_err());
        assert!(Template::parse("uri", "http://${stageVariables.backend/", true).is_err());
        assert!(Template::parse("uri", "http://x/{a-b}", true).is_err());
    }
}
