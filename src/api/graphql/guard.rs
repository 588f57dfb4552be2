//! What runs before anything recursive touches a GraphQL request, on every entry point
//! (`POST /graphql` and the graphql-ws socket both go through the schema, so both through
//! this extension).
//!
//! async-graphql's parser (pest) and its validation visitors recurse once per nesting
//! level; a 6 KB document of 1,500 nested input objects overflows a tokio worker's stack
//! and aborts the whole process. So the order here is:
//!
//! 1. [`scan`]: a linear, non-recursive pass over the query text that bounds the bracket
//!    nesting (`{`, `[`, `(`, outside strings and comments) and the document size;
//! 2. the variables' nesting, walked with an explicit stack;
//! 3. only then the parser, and an iterative check of the selection depth through
//!    fragment spreads (what `limit_recursive_depth` does, without recursion);
//! 4. after validation, the engine's depth and complexity limits.
//!
//! A document that only introspects (every operation a query whose root fields are
//! `__schema`, `__type` or `__typename`) is held to [`Limits::introspection`] instead, outside
//! production: the standard introspection query of graphql-js (`getIntrospectionQuery()`,
//! which GraphiQL, codegen, graphql-inspector and Python's `gql` send) is 15 levels deep by
//! async-graphql's count. In production introspection is off and such a document gets the
//! ordinary limits (and no schema). Everything else, on every entry point, keeps [`Limits::default`].
//!
//! Every refusal carries `extensions.code` ([`codes`]). Errors that async-graphql itself
//! produces without a code get one by the stage that produced them: `GRAPHQL_PARSE_FAILED`
//! for parsing, `GRAPHQL_VALIDATION_FAILED` for validation, `BAD_REQUEST` for the rest.

use std::sync::Arc;

use async_graphql::{
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery,
        NextPrepareRequest, NextRequest, NextSubscribe, NextValidation,
    },
    parser::types::{ExecutableDocument, Selection, SelectionSet},
    ErrorExtensionValues, Name, Positioned, Request, Response, ServerError, ServerResult,
    ValidationResult, Value, Variables,
};
use futures::stream::BoxStream;

/// The `extensions.code` values of refusals made before a resolver runs.
pub mod codes {
    /// The document is not GraphQL.
    pub const PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
    /// The document does not fit the schema (unknown field, wrong argument type, ...).
    pub const VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";
    /// Nested, deep, long or complex beyond the limits.
    pub const QUERY_TOO_COMPLEX: &str = "QUERY_TOO_COMPLEX";
    /// A request-level mistake: no such operation, a subscription over HTTP, bad JSON.
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
}

/// The limits of one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Brackets open at once anywhere in the document.
    pub max_nesting: usize,
    /// Nesting of JSON variables (objects and lists).
    pub max_variable_nesting: usize,
    /// Length of the query text (photos belong in variables, but an inline one fits).
    pub max_query_bytes: usize,
    /// Selection-set depth, following fragment spreads.
    pub max_selection_depth: usize,
    /// Directives on one field, fragment or operation.
    pub max_directives: usize,
    /// What async-graphql calls depth (fields below the root).
    pub max_depth: usize,
    /// async-graphql's complexity (one per field, by default).
    pub max_complexity: usize,
    /// Selections visited with every fragment spread expanded: a few kilobytes of
    /// fragments spreading each other ten times over expand to 10^20 selections, which
    /// would pin a thread (here, and in async-graphql's own validation) forever.
    pub max_expanded_selections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nesting: 48,
            max_variable_nesting: 16,
            max_query_bytes: 8 * 1024 * 1024,
            max_selection_depth: 24,
            max_directives: 16,
            max_depth: 12,
            max_complexity: 500,
            max_expanded_selections: 5_000,
        }
    }
}

impl Limits {
    /// For documents that only introspect: the standard introspection query of graphql-js
    /// 16/17 is depth 15 by async-graphql's count (its `TypeRef` fragment nests `ofType`
    /// nine times) and complexity 220 here; only the depth is raised, with room to spare.
    /// Everything else is as for any document: the scan before parsing, the selection depth
    /// through fragments, and the complexity (a hundred aliased `__schema`s is still refused).
    pub fn introspection() -> Limits {
        Limits {
            max_depth: 20,
            ..Limits::default()
        }
    }
}

/// Whether every operation of the document is a query that only introspects: its root
/// fields (through fragments) are `__schema`, `__type` and `__typename`. Iterative; a
/// fragment is looked at once, so cycles end (validation names them afterwards).
pub fn is_introspection_only(doc: &ExecutableDocument) -> bool {
    use async_graphql::parser::types::OperationType;
    let mut sets: Vec<&Positioned<SelectionSet>> = Vec::new();
    for (_, operation) in doc.operations.iter() {
        if operation.node.ty != OperationType::Query {
            return false;
        }
        sets.push(&operation.node.selection_set);
    }
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    while let Some(set) = sets.pop() {
        for selection in &set.node.items {
            match &selection.node {
                Selection::Field(field) => {
                    if !field.node.name.node.starts_with("__") {
                        return false;
                    }
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    if !seen.insert(name) {
                        continue;
                    }
                    match doc.fragments.get(&spread.node.fragment_name.node as &Name) {
                        Some(fragment) => sets.push(&fragment.node.selection_set),
                        None => return false,
                    }
                }
                Selection::InlineFragment(inline) => sets.push(&inline.node.selection_set),
            }
        }
    }
    true
}

/// Why a document was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the document nests deeper than {0} brackets")]
    NestingTooDeep(usize),
    #[error("the document is longer than {0} bytes")]
    TooLong(usize),
    #[error("the variables nest deeper than {0} levels")]
    VariablesTooDeep(usize),
    #[error("selections nest deeper than {0} levels (fragments included)")]
    SelectionTooDeep(usize),
    #[error("more than {0} directives in one place")]
    TooManyDirectives(usize),
    #[error("the query is nested too deep: depth {depth}, at most {max}")]
    DepthLimit { depth: usize, max: usize },
    #[error("the query is too complex: complexity {complexity}, at most {max}")]
    ComplexityLimit { complexity: usize, max: usize },
    #[error("fragments expand to more than {0} selections")]
    TooManySelections(usize),
    /// A string that does not end where GraphQL says it does (an unclosed `\"\"\"`, a
    /// line break inside a `\"...\"` string): the parser could read the rest differently
    /// from the scan, so it never sees it.
    #[error("unterminated string")]
    UnterminatedString,
}

impl Refusal {
    fn into_server_error(self) -> ServerError {
        let code = match self {
            Refusal::UnterminatedString => codes::PARSE_FAILED,
            _ => codes::QUERY_TOO_COMPLEX,
        };
        with_code(ServerError::new(self.to_string(), None), code)
    }
}

/// Checks the query text without recursion: bracket nesting outside strings and comments,
/// and length. Linear in the text; never allocates.
pub fn scan(query: &str, limits: &Limits) -> Result<(), Refusal> {
    if query.len() > limits.max_query_bytes {
        return Err(Refusal::TooLong(limits.max_query_bytes));
    }
    let bytes = query.as_bytes();
    let (mut i, mut depth) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                // Block string: ends at an unescaped `"""`; `\"""` is an escaped quote.
                i += 3;
                loop {
                    if i >= bytes.len() {
                        // Unclosed: the parser would back off and read `""` then a new
                        // `"...` string over text this scan never counted.
                        return Err(Refusal::UnterminatedString);
                    }
                    if bytes[i..].starts_with(b"\\\"\"\"") {
                        i += 4;
                    } else if bytes[i..].starts_with(b"\"\"\"") {
                        i += 2;
                        break;
                    } else {
                        i += 1;
                    }
                }
            }
            b'"' => {
                // A plain string ends at its `"` and never spans a line; anything else is
                // not GraphQL, and refused before the parser could read it another way.
                i += 1;
                loop {
                    match bytes.get(i) {
                        None | Some(b'\n') | Some(b'\r') => {
                            return Err(Refusal::UnterminatedString)
                        }
                        Some(b'"') => break,
                        Some(b'\\') => match bytes.get(i + 1) {
                            None | Some(b'\n') | Some(b'\r') => {
                                return Err(Refusal::UnterminatedString)
                            }
                            Some(_) => i += 2,
                        },
                        Some(_) => i += 1,
                    }
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > limits.max_nesting {
                    return Err(Refusal::NestingTooDeep(limits.max_nesting));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The deepest nesting of objects and lists in the variables, walked with a stack.
pub fn check_variables(variables: &Variables, limits: &Limits) -> Result<(), Refusal> {
    let mut stack: Vec<(&Value, usize)> = variables.values().map(|v| (v, 1)).collect();
    while let Some((value, depth)) = stack.pop() {
        if depth > limits.max_variable_nesting {
            return Err(Refusal::VariablesTooDeep(limits.max_variable_nesting));
        }
        match value {
            Value::List(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(fields) => stack.extend(fields.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

/// Selection depth through fragment spreads, and directives per place, without recursion.
/// Fragment cycles are bounded by the depth limit (validation names them afterwards).
pub fn check_document(doc: &ExecutableDocument, limits: &Limits) -> Result<(), Refusal> {
    let too_many = |directives: usize| directives > limits.max_directives;
    let mut stack: Vec<(&Positioned<SelectionSet>, usize)> = Vec::new();
    for (_, operation) in doc.operations.iter() {
        if too_many(operation.node.directives.len()) {
            return Err(Refusal::TooManyDirectives(limits.max_directives));
        }
        stack.push((&operation.node.selection_set, 1));
    }
    for fragment in doc.fragments.values() {
        if too_many(fragment.node.directives.len()) {
            return Err(Refusal::TooManyDirectives(limits.max_directives));
        }
    }
    let mut visited = 0usize;
    while let Some((set, depth)) = stack.pop() {
        if depth > limits.max_selection_depth {
            return Err(Refusal::SelectionTooDeep(limits.max_selection_depth));
        }
        visited += set.node.items.len();
        if visited > limits.max_expanded_selections {
            return Err(Refusal::TooManySelections(limits.max_expanded_selections));
        }
        for selection in &set.node.items {
            if too_many(selection.node.directives().len()) {
                return Err(Refusal::TooManyDirectives(limits.max_directives));
            }
            match &selection.node {
                Selection::Field(field) => {
                    if !field.node.selection_set.node.items.is_empty() {
                        stack.push((&field.node.selection_set, depth + 1));
                    }
                }
                Selection::FragmentSpread(spread) => {
                    if let Some(fragment) =
                        doc.fragments.get(&spread.node.fragment_name.node as &Name)
                    {
                        stack.push((&fragment.node.selection_set, depth + 1));
                    }
                }
                Selection::InlineFragment(inline) => {
                    stack.push((&inline.node.selection_set, depth + 1));
                }
            }
        }
    }
    Ok(())
}

/// The extension that applies all of the above (see the module documentation).
pub struct Guard {
    /// For every document.
    pub limits: Limits,
    /// For documents that only introspect; `None` (production): the ordinary limits.
    pub introspection: Option<Limits>,
    /// Documents already parsed and checked under these limits.
    pub documents: Arc<Documents>,
}

impl ExtensionFactory for Guard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(GuardExtension {
            limits: self.limits,
            introspection: self.introspection,
            introspecting: std::sync::atomic::AtomicBool::new(false),
            documents: self.documents.clone(),
        })
    }
}

/// Documents that were parsed and passed [`check_document`], by their exact text.
///
/// Apps send the same few operations over and over (a create, a list, a status), each time
/// as the same text with different variables; parsing (pest) and the depth check were a
/// fifth of the engine's GraphQL CPU under load. A cached document is cloned (its names
/// are shared `Arc<str>`s), which costs a fraction of a parse. Only documents that parsed
/// and passed [`check_document`] are kept; validation and the depth and complexity limits
/// run on every request, cached or not, so a refused document is refused the same way each
/// time. The text is the key, so a different document never gets another's parse. At most
/// [`Documents::CAPACITY`] are kept, and a full cache starts over (no eviction order to
/// keep up, and a flood of distinct documents costs what it cost without a cache).
#[derive(Debug, Default)]
pub struct Documents {
    parsed: dashmap::DashMap<Box<str>, Arc<Checked>>,
    hits: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Checked {
    document: ExecutableDocument,
    introspection_only: bool,
}

impl Documents {
    /// Distinct documents kept at once.
    pub const CAPACITY: usize = 512;
    /// Longer documents are parsed each time: the operations apps repeat are short.
    pub const MAX_LEN: usize = 16 * 1024;

    /// The kept parse of `query`, if any. Each call is counted for operators in
    /// `arreglame_graphql_documents_total` by `source` (`cache` or `parsed`); `hits` is
    /// this cache's own count.
    fn get(&self, query: &str) -> Option<Arc<Checked>> {
        let Some(checked) = self.parsed.get(query).map(|c| c.value().clone()) else {
            metrics::counter!("arreglame_graphql_documents_total", "source" => "parsed")
                .increment(1);
            return None;
        };
        metrics::counter!("arreglame_graphql_documents_total", "source" => "cache").increment(1);
        self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(checked)
    }

    fn keep(&self, query: &str, checked: Checked) {
        if query.len() > Self::MAX_LEN {
            return;
        }
        if self.parsed.len() >= Self::CAPACITY {
            self.parsed.clear();
        }
        self.parsed.insert(query.into(), Arc::new(checked));
    }

    /// Documents kept now.
    pub fn len(&self) -> usize {
        self.parsed.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.parsed.is_empty()
    }

    /// Parses saved since start.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One request's (or one graphql-ws operation's) guard: async-graphql creates the
/// extensions anew for each, so the flag set by `parse_query` holds for this document only.
struct GuardExtension {
    limits: Limits,
    introspection: Option<Limits>,
    introspecting: std::sync::atomic::AtomicBool,
    documents: Arc<Documents>,
}

impl GuardExtension {
    /// The limits for the document being processed (after parsing).
    fn limits(&self) -> &Limits {
        match &self.introspection {
            Some(limits)
                if self
                    .introspecting
                    .load(std::sync::atomic::Ordering::Acquire) =>
            {
                limits
            }
            _ => &self.limits,
        }
    }
}

fn with_code(mut error: ServerError, code: &'static str) -> ServerError {
    let has_code = error
        .extensions
        .as_ref()
        .is_some_and(|e| e.get("code").is_some());
    if !has_code {
        error
            .extensions
            .get_or_insert_with(ErrorExtensionValues::default)
            .set("code", code);
    }
    error
}

fn coded(errors: Vec<ServerError>, code: &'static str) -> Vec<ServerError> {
    errors.into_iter().map(|e| with_code(e, code)).collect()
}

fn code_response(mut response: Response) -> Response {
    response.errors = coded(std::mem::take(&mut response.errors), codes::BAD_REQUEST);
    response
}

#[async_graphql::async_trait::async_trait]
impl Extension for GuardExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        // Last line: anything still without a code (an unknown operation name, a
        // subscription sent over HTTP) is the request's fault.
        code_response(next.run(ctx).await)
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        use futures::StreamExt;
        next.run(ctx, stream).map(code_response).boxed()
    }

    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        scan(&request.query, &self.limits).map_err(Refusal::into_server_error)?;
        check_variables(&request.variables, &self.limits).map_err(Refusal::into_server_error)?;
        // One AI budget per operation, whatever the transport (a graphql-ws connection
        // carries many operations).
        let request = request.data(super::caller::OperationBudget::default());
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let _ = (ctx, variables, next);
        if let Some(checked) = self.documents.get(query) {
            self.introspecting.store(
                checked.introspection_only,
                std::sync::atomic::Ordering::Release,
            );
            return Ok(checked.document.clone());
        }
        // Parsed here rather than by `next`, so the depth check below is ours (iterative)
        // and every parse error gets its code.
        let doc = async_graphql::parser::parse_query(query)
            .map_err(|e| with_code(ServerError::from(e), codes::PARSE_FAILED))?;
        let introspection_only = self.introspection.is_some() && is_introspection_only(&doc);
        if introspection_only {
            self.introspecting
                .store(true, std::sync::atomic::Ordering::Release);
        }
        check_document(&doc, self.limits()).map_err(Refusal::into_server_error)?;
        self.documents.keep(
            query,
            Checked {
                document: doc.clone(),
                introspection_only,
            },
        );
        Ok(doc)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next
            .run(ctx)
            .await
            .map_err(|errors| coded(errors, codes::VALIDATION_FAILED))?;
        let limits = self.limits();
        if result.depth > limits.max_depth {
            return Err(vec![Refusal::DepthLimit {
                depth: result.depth,
                max: limits.max_depth,
            }
            .into_server_error()]);
        }
        if result.complexity > limits.max_complexity {
            return Err(vec![Refusal::ComplexityLimit {
                complexity: result.complexity,
                max: limits.max_complexity,
            }
            .into_server_error()]);
        }
        Ok(result)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        next.run(ctx, operation_name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nested_object(levels: usize) -> String {
        format!(
            "query {{ __typename @skip(if: {}1{}) }}",
            "{a:".repeat(levels),
            "}".repeat(levels)
        )
    }

    #[test]
    fn deep_input_objects_are_refused_before_parsing() {
        let limits = Limits::default();
        assert_eq!(
            scan(&nested_object(1_500), &limits),
            Err(Refusal::NestingTooDeep(limits.max_nesting))
        );
        assert_eq!(scan(&nested_object(10), &limits), Ok(()));
        let lists = format!("{{ f(a: {}1{}) }}", "[".repeat(100), "]".repeat(100));
        assert!(scan(&lists, &limits).is_err());
    }

    /// The review's bypass: an unclosed block string ended the scan early, and the parser
    /// read `""` then a plain string, then the deep object the scan never counted.
    #[test]
    fn a_string_the_parser_could_read_otherwise_is_refused() {
        let limits = Limits::default();
        let bypass = format!(
            "query {{ __typename @skip(if: [\"\"\" \", {}]) }}",
            nested_object_value(2000)
        );
        assert_eq!(scan(&bypass, &limits), Err(Refusal::UnterminatedString));
        let newline = format!("{{ f(a: \"x\n{}\") }}", "{".repeat(100));
        assert_eq!(scan(&newline, &limits), Err(Refusal::UnterminatedString));
        let escaped_newline = "{ f(a: \"x\\\n\") }";
        assert_eq!(
            scan(escaped_newline, &limits),
            Err(Refusal::UnterminatedString)
        );
        assert_eq!(scan("{ f(a: \"ok\") }", &limits), Ok(()));
    }

    /// Fragments spreading each other ten times over, 22 deep: small, acyclic, and 10^22
    /// selections once expanded.
    #[test]
    fn fragment_fan_out_is_bounded() {
        let limits = Limits::default();
        let mut doc = String::from("query { ...F0 }\n");
        for i in 0..22 {
            let spreads: String = (0..10).map(|_| format!("...F{} ", i + 1)).collect();
            doc.push_str(&format!("fragment F{i} on Query {{ {spreads} }}\n"));
        }
        doc.push_str("fragment F22 on Query { __typename }\n");
        let parsed = async_graphql::parser::parse_query(&doc).unwrap();
        assert_eq!(
            check_document(&parsed, &limits),
            Err(Refusal::TooManySelections(limits.max_expanded_selections))
        );
    }

    fn nested_object_value(levels: usize) -> String {
        format!("{}1{}", "{a:".repeat(levels), "}".repeat(levels))
    }

    #[test]
    fn brackets_inside_strings_and_comments_do_not_count() {
        let limits = Limits::default();
        let inside = format!(
            "{{ f(a: \"{}\", b: \"\"\"{}\\\"\"\" {}\"\"\") # {}\n }}",
            "{".repeat(500),
            "[".repeat(500),
            "(".repeat(500),
            "{".repeat(500)
        );
        assert_eq!(scan(&inside, &limits), Ok(()));
        // An escaped quote does not end a string.
        let escaped = format!("{{ f(a: \"\\\"{}\") }}", "{".repeat(500));
        assert_eq!(scan(&escaped, &limits), Ok(()));
    }

    #[test]
    fn deep_variables_are_refused() {
        let limits = Limits::default();
        let mut value = serde_json::json!(1);
        for _ in 0..40 {
            value = serde_json::json!({ "a": value });
        }
        let vars = Variables::from_json(serde_json::json!({ "input": value }));
        assert_eq!(
            check_variables(&vars, &limits),
            Err(Refusal::VariablesTooDeep(limits.max_variable_nesting))
        );
        let flat = Variables::from_json(serde_json::json!({ "input": { "a": [1, 2] } }));
        assert_eq!(check_variables(&flat, &limits), Ok(()));
    }

    #[test]
    fn fragment_chains_count_towards_the_selection_depth() {
        let limits = Limits::default();
        let mut doc = String::from("query { ...F0 }\n");
        for i in 0..60 {
            doc.push_str(&format!("fragment F{i} on Query {{ ...F{} }}\n", i + 1));
        }
        doc.push_str("fragment F60 on Query { __typename }\n");
        let parsed = async_graphql::parser::parse_query(&doc).unwrap();
        assert_eq!(
            check_document(&parsed, &limits),
            Err(Refusal::SelectionTooDeep(limits.max_selection_depth))
        );
        let shallow = async_graphql::parser::parse_query("{ a { b { c } } }").unwrap();
        assert_eq!(check_document(&shallow, &limits), Ok(()));
    }

    /// The query `getIntrospectionQuery()` of graphql-js 16.15.0 returns with its default
    /// options, byte for byte (17.1.0 returns the same text).
    const GRAPHQL_JS_INTROSPECTION: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/graphql-js-16.15.0-introspection-query.graphql"
    ));

    fn schema(production: bool) -> crate::api::graphql::ArreglameSchema {
        use crate::api::graphql::{MutationRoot, QueryRoot, SubscriptionRoot};
        let builder = async_graphql::Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
            .extension(crate::api::graphql::guard(production));
        if production {
            builder.disable_introspection().finish()
        } else {
            builder.finish()
        }
    }

    fn schema_with(
        documents: &Arc<Documents>,
        introspection: Option<Limits>,
    ) -> crate::api::graphql::ArreglameSchema {
        use crate::api::graphql::{MutationRoot, QueryRoot, SubscriptionRoot};
        async_graphql::Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
            .extension(Guard {
                limits: Limits::default(),
                introspection,
                documents: documents.clone(),
            })
            .finish()
    }

    #[tokio::test]
    async fn a_repeated_document_is_parsed_once_and_keeps_its_introspection_limits() {
        let documents = Arc::new(Documents::default());
        let schema = schema_with(&documents, Some(Limits::introspection()));
        let first = schema.execute(GRAPHQL_JS_INTROSPECTION).await;
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        assert_eq!((documents.len(), documents.hits()), (1, 0));
        // The second time it comes from the cache, still held to the introspection limits
        // (under the ordinary ones it would be refused: depth 15).
        let second = schema.execute(GRAPHQL_JS_INTROSPECTION).await;
        assert!(second.errors.is_empty(), "{:?}", second.errors);
        assert_eq!((documents.len(), documents.hits()), (1, 1));
        assert_eq!(
            first.data.into_json().unwrap(),
            second.data.into_json().unwrap()
        );
    }

    #[tokio::test]
    async fn unparsable_documents_are_not_kept_and_refused_documents_are_refused_each_time() {
        let documents = Arc::new(Documents::default());
        let strict = schema_with(&documents, None);
        for _ in 0..2 {
            let refused = strict.execute(GRAPHQL_JS_INTROSPECTION).await;
            assert_eq!(refused.errors.len(), 1, "{:?}", refused.errors);
            assert!(refused.errors[0].message.contains("depth 15"));
            let broken = strict.execute("{ __typename").await;
            let code = broken.errors[0]
                .extensions
                .as_ref()
                .and_then(|e| e.get("code"))
                .map(|v| v.to_string());
            assert_eq!(code, Some(format!("{:?}", codes::PARSE_FAILED)));
        }
        // The unparsable one is never kept; the deep one parsed and is kept, and is refused
        // each time by validation (which runs on every request, cached or not).
        assert_eq!((documents.len(), documents.hits()), (1, 1));
        assert!(documents.get("{ __typename").is_none());
    }

    #[tokio::test]
    async fn a_full_document_cache_starts_over_and_every_document_still_answers() {
        let documents = Arc::new(Documents::default());
        let schema = schema_with(&documents, None);
        for n in 0..=Documents::CAPACITY {
            let answer = schema.execute(format!("{{ a{n}: __typename }}")).await;
            assert!(answer.errors.is_empty(), "{:?}", answer.errors);
            assert_eq!(answer.data.into_json().unwrap()[format!("a{n}")], "Query");
        }
        // The 513th found the cache full: it was emptied and holds that one alone.
        assert_eq!(documents.len(), 1);
        let again = schema
            .execute(format!("{{ a{}: __typename }}", Documents::CAPACITY))
            .await;
        assert!(again.errors.is_empty());
        assert_eq!(documents.hits(), 1);
    }

    #[tokio::test]
    async fn the_graphql_js_introspection_query_answers_outside_production_only() {
        let doc = async_graphql::parser::parse_query(GRAPHQL_JS_INTROSPECTION).unwrap();
        assert!(is_introspection_only(&doc));
        // What it needs: more than the ordinary limits, well within the introspection ones.
        let answer = schema(false).execute(GRAPHQL_JS_INTROSPECTION).await;
        assert!(answer.errors.is_empty(), "{:?}", answer.errors);
        let data = answer.data.into_json().unwrap();
        assert_eq!(data["__schema"]["queryType"]["name"], "Query");
        assert_eq!(data["__schema"]["subscriptionType"]["name"], "Subscription");

        // The same document under the ordinary limits is refused (that is why it is exempt)...
        let strict = async_graphql::Schema::build(
            crate::api::graphql::QueryRoot,
            crate::api::graphql::MutationRoot,
            crate::api::graphql::SubscriptionRoot,
        )
        .extension(Guard {
            limits: Limits::default(),
            introspection: None,
            documents: Arc::default(),
        })
        .finish();
        let refused = strict.execute(GRAPHQL_JS_INTROSPECTION).await;
        assert_eq!(refused.errors.len(), 1, "{:?}", refused.errors);
        assert!(
            refused.errors[0].message.contains("depth 15"),
            "{:?}",
            refused.errors
        );
        // ...and production answers no schema.
        let production = schema(true).execute(GRAPHQL_JS_INTROSPECTION).await;
        assert!(!production.errors.is_empty());
        assert_eq!(
            production.data.into_json().unwrap()["__schema"],
            serde_json::Value::Null
        );
    }

    #[tokio::test]
    async fn only_pure_introspection_gets_the_introspection_limits() {
        let deep = format!(
            "{{ __schema {{ types {{ fields {{ type {{ {} name {} }} }} }} }} }}",
            "ofType {".repeat(8),
            "}".repeat(8)
        );
        assert!(schema(false).execute(deep.as_str()).await.errors.is_empty());
        // Mixed with a real field: the ordinary limits.
        let mixed = deep.replacen(
            "{ __schema",
            "{ myServiceRequests { edges { cursor } } __schema",
            1,
        );
        let doc = async_graphql::parser::parse_query(&mixed).unwrap();
        assert!(!is_introspection_only(&doc));
        let answer = schema(false).execute(mixed.as_str()).await;
        assert!(
            answer.errors[0].message.contains("deep"),
            "{:?}",
            answer.errors
        );
        // A mutation never counts as introspection, nor does a spread of an unknown fragment.
        for text in ["mutation { __typename }", "{ ...Missing }"] {
            let doc = async_graphql::parser::parse_query(text).unwrap();
            assert!(!is_introspection_only(&doc), "{text}");
        }
        // Aliased copies of the whole schema are still bounded.
        let many: String = (0..100)
            .map(|i| {
                format!("s{i}: __schema {{ types {{ name fields {{ name type {{ name }} }} }} }} ")
            })
            .collect();
        let answer = schema(false).execute(format!("{{ {many} }}")).await;
        assert_eq!(
            answer.errors[0]
                .extensions
                .as_ref()
                .and_then(|e| e.get("code"))
                .map(|v| v.to_string()),
            Some("\"QUERY_TOO_COMPLEX\"".to_string()),
            "{:?}",
            answer.errors
        );
    }

    /// Characters that matter to the scanner and the parser, in hostile proportions.
    fn hostile_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just("(".to_string()),
            Just(")".to_string()),
            Just("\"".to_string()),
            Just("\"\"\"".to_string()),
            Just("\\".to_string()),
            Just("#".to_string()),
            Just("\n".to_string()),
            Just("a:".to_string()),
            Just("...".to_string()),
            Just("@skip(if: ".to_string()),
            Just("query ".to_string()),
            Just("fragment F on Query ".to_string()),
            "[a-z$:!,=|&]{1,4}",
            any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(piece, 0..400).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::telemetry::fuzz_cases(), ..ProptestConfig::default() })]

        /// The pre-check never panics, and whatever passes it the parser handles without
        /// overflowing (the test thread's stack is smaller than a tokio worker's).
        #[test]
        fn hostile_documents_are_scanned_and_parsed_without_crashing(text in hostile_text()) {
            let limits = Limits::default();
            if scan(&text, &limits).is_ok() {
                if let Ok(doc) = async_graphql::parser::parse_query(&text) {
                    let _ = check_document(&doc, &limits);
                }
            }
        }

        /// Whatever quotes, escapes and line breaks come first, deep nesting after them is
        /// refused by the scan or parses without a crash: the scan and the parser agree on
        /// where strings end.
        #[test]
        fn quotes_before_deep_nesting_never_hide_it(
            prefix in prop::collection::vec(prop_oneof![
                Just("\"\"\""), Just("\""), Just("\\"), Just("\n"), Just(" "), Just("a"), Just("["), Just(","),
            ], 0..12)
        ) {
            let text = format!("query {{ __typename @skip(if: [{} {}]) }}", prefix.concat(), nested_object_value(3000));
            if scan(&text, &Limits::default()).is_ok() {
                let _ = async_graphql::parser::parse_query(&text);
            }
        }

        /// Deep nesting of any bracket mix is refused by the scan, never by a crash.
        #[test]
        fn any_deep_bracket_mix_is_refused(opens in prop::collection::vec(0usize..3, 49..3000)) {
            let text: String = opens.iter().map(|i| ["{", "[", "("][*i]).collect();
            prop_assert!(scan(&text, &Limits::default()).is_err());
        }
    }
}
