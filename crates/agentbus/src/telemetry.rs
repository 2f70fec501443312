//! Trace context across agents, with OpenTelemetry.
//!
//! Off until [`enable`] (or `init_from_env`, with the `otlp` feature)
//! turns it on in a process; off, nothing is read, written or allocated for
//! it. On:
//!
//! - every task sent over request/reply (`send agent.<name>.task`), every
//!   event published (`publish <subject>`) and everything stored in a
//!   stream (queued tasks, inbox messages, broadcasts: `publish <subject>`)
//!   is a producer span, child of the current context, and carries its
//!   W3C `traceparent` header (and `tracestate`, when the trace has one);
//! - a runtime runs each handler inside a consumer span `process
//!   <subject>` whose parent is the context the task came with (a new trace
//!   when it came with none), so tasks sent and events published from a
//!   handler are its children, across processes and across work queues; a
//!   retry or redelivery of a queued task keeps the headers it was stored
//!   with, so every attempt is in the first one's trace.
//!
//! Spans follow OpenTelemetry's messaging conventions: `messaging.system =
//! "nats"`, `messaging.destination.name`, `messaging.operation.type`
//! (`send` or `process`) and `messaging.message.id` (the task id). They go
//! to the global tracer provider, which the application sets up, or
//! `init_from_env` over OTLP. Clients that ignore headers (the seed-format
//! Python agents) keep working: the headers are all there is.

use async_nats::{HeaderMap, HeaderName};
use opentelemetry::global::BoxedTracer;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, StringValue, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::future::Future;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The tracer spans are made with, taken from the global provider by
/// [`enable`]: made once, not at every span.
static TRACER: RwLock<Option<BoxedTracer>> = RwLock::new(None);

/// The tracer's name, as spans show it (their instrumentation scope).
const TRACER_NAME: &str = "agentbus";

/// Turns trace context on in this process: spans go to the global tracer
/// provider as it is now (set it up first, with
/// `opentelemetry::global::set_tracer_provider`; call this again after
/// replacing it).
pub fn enable() {
    let tracer = global::tracer(TRACER_NAME);
    *TRACER
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(tracer);
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether trace context is on in this process.
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Runs `future` in the trace given by `traceparent` (and `tracestate`):
/// what it sends is a child of that span, such as one a caller passed in
/// MCP's `_meta`. As it is when tracing is off or the value is not valid
/// W3C trace context.
pub async fn continue_trace<F: Future>(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
    future: F,
) -> F::Output {
    use opentelemetry::context::FutureExt as _;
    match Parent::from_values(traceparent, tracestate).0 {
        Some(cx) => future.with_context(cx).await,
        None => future.await,
    }
}

/// The trace context to store a message with on behalf of an earlier one
/// (a dead letter replayed), as header names and values: none when this
/// process traces, since its own span, a child of `traceparent`
/// ([`continue_trace`]), carries the trace on; else the values as they
/// were, so that the trace goes on all the same. Only valid W3C trace
/// context is passed on: the values come from a stored letter, which
/// anything may have written.
pub(crate) fn passed_on(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Vec<(&'static str, String)> {
    if is_enabled() {
        return Vec::new();
    }
    let Some(traceparent) = traceparent.map(str::trim) else {
        return Vec::new();
    };
    let values = Values {
        traceparent,
        tracestate,
    };
    let cx = TraceContextPropagator::new().extract(&values);
    let span = cx.span();
    let context = span.span_context();
    if !context.is_valid() {
        return Vec::new();
    }
    let mut passed = vec![(TRACEPARENT, traceparent.to_owned())];
    // Its entries as the propagator read them.
    let state = context.trace_state().header();
    if !state.is_empty() && printable(&state) {
        passed.push((TRACESTATE, state));
    }
    passed
}

/// The trace context a message came with; empty when tracing is off or it
/// came with none.
#[derive(Clone, Default)]
pub(crate) struct Parent(Option<Context>);

impl std::fmt::Debug for Parent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Parent").field(&self.0.is_some()).finish()
    }
}

impl Parent {
    /// Read from a message's headers.
    pub(crate) fn from_headers(headers: Option<&HeaderMap>) -> Self {
        if !is_enabled() {
            return Self(None);
        }
        let value = |name| Some(headers?.get(name)?.as_str());
        Self::from_values(value(TRACEPARENT), value(TRACESTATE))
    }

    /// Read from `traceparent` and `tracestate` values.
    pub(crate) fn from_values(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        if !is_enabled() {
            return Self(None);
        }
        let Some(traceparent) = traceparent else {
            return Self(None);
        };
        let values = Values {
            traceparent,
            tracestate,
        };
        let cx = TraceContextPropagator::new().extract(&values);
        Self(cx.span().span_context().is_valid().then_some(cx))
    }
}

/// The W3C header names.
pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";

/// What a span is about: the subject a task came on or something is sent
/// to, kept as the attribute value it becomes (one allocation, shared by
/// every span about it).
#[derive(Debug, Clone)]
pub(crate) struct Destination(StringValue);

impl Destination {
    pub(crate) fn new(subject: &str) -> Self {
        Self(StringValue::from(std::sync::Arc::<str>::from(subject)))
    }

    fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// A span of this process while it lasts (it ends when the last clone of
/// its context is dropped); nothing when tracing is off.
#[derive(Clone, Default)]
pub(crate) struct Traced(Option<Context>);

impl Traced {
    /// A consumer span `process <destination>` for a task handled here,
    /// child of `parent` (a root when it is empty).
    pub(crate) fn process(
        parent: &Parent,
        destination: impl FnOnce() -> Destination,
        task_id: &str,
    ) -> Self {
        if !is_enabled() {
            return Self(None);
        }
        let parent = parent.0.clone().unwrap_or_default();
        Self(Some(span(
            &parent,
            SpanKind::Consumer,
            "process",
            destination(),
            Some(task_id),
        )))
    }

    /// A producer span `<operation> <destination>` for something sent from
    /// here, child of the current context.
    pub(crate) fn produce(
        operation: &'static str,
        destination: &str,
        message_id: Option<&str>,
    ) -> Self {
        if !is_enabled() {
            return Self(None);
        }
        Self(Some(span(
            &Context::current(),
            SpanKind::Producer,
            operation,
            Destination::new(destination),
            message_id,
        )))
    }

    /// Its `traceparent` (and `tracestate`, when there is one) as headers;
    /// `None` when off.
    pub(crate) fn headers(&self) -> Option<HeaderMap> {
        let cx = self.0.as_ref()?;
        let mut headers = Headers(HeaderMap::new());
        TraceContextPropagator::new().inject_context(cx, &mut headers);
        Some(headers.0)
    }

    /// Marks the span failed, with `error` as its description.
    pub(crate) fn failed(&self, error: &str) {
        if let Some(cx) = &self.0 {
            cx.span().set_status(Status::error(error.to_owned()));
        }
    }

    /// `future`, run with this span as the current context (as it is).
    pub(crate) fn within<F: Future>(&self, future: F) -> impl Future<Output = F::Output> {
        use futures::future::Either;
        use opentelemetry::context::FutureExt as _;
        match &self.0 {
            Some(cx) => Either::Left(future.with_context(cx.clone())),
            None => Either::Right(future),
        }
    }
}

fn span(
    parent: &Context,
    kind: SpanKind,
    operation: &'static str,
    destination: Destination,
    message_id: Option<&str>,
) -> Context {
    let tracer = TRACER
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(tracer) = tracer.as_ref() else {
        return parent.clone();
    };
    let operation_type = match kind {
        SpanKind::Consumer => "process",
        _ => "send",
    };
    let name = format!("{operation} {}", destination.as_str());
    let mut attributes = Vec::with_capacity(5);
    attributes.extend([
        KeyValue::new("messaging.system", "nats"),
        KeyValue::new("messaging.destination.name", destination.0),
        KeyValue::new("messaging.operation.name", operation),
        KeyValue::new("messaging.operation.type", operation_type),
    ]);
    if let Some(id) = message_id {
        attributes.push(KeyValue::new("messaging.message.id", id.to_owned()));
    }
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(tracer, parent);
    parent.with_span(span)
}

/// The two values trace context is read from.
struct Values<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Values<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// Whether `value` is printable ASCII, as W3C trace context is: the
/// propagator lets a `tracestate` with line ends through (from a caller's
/// MCP `_meta`, say), which no header may hold.
fn printable(value: &str) -> bool {
    value.bytes().all(|byte| (b' '..=b'~').contains(&byte))
}

/// The W3C headers written into a message's header map; an empty
/// `tracestate` (the usual case) is left out, as the W3C format allows, and
/// so is one that is not [`printable`].
struct Headers(HeaderMap);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        const TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);
        const TRACESTATE_NAME: HeaderName = HeaderName::from_static(TRACESTATE);
        let name = match key {
            _ if value.is_empty() || !printable(&value) => return,
            TRACEPARENT => TRACEPARENT_NAME,
            TRACESTATE => TRACESTATE_NAME,
            _ => return,
        };
        self.0.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_w3c_headers_with_a_value_are_written() {
        const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut headers = Headers(HeaderMap::new());
        headers.set(TRACEPARENT, PARENT.to_owned());
        headers.set(TRACESTATE, String::new());
        headers.set("baggage", "k=v".to_owned());
        assert_eq!(headers.0.len(), 1);
        assert_eq!(headers.0.get(TRACEPARENT).unwrap().as_str(), PARENT);
        headers.set(TRACESTATE, "vendor=1\r\nx-forged: 1".to_owned());
        assert_eq!(headers.0.len(), 1);
        headers.set(TRACESTATE, "vendor=1".to_owned());
        assert_eq!(headers.0.len(), 2);
        assert_eq!(headers.0.get(TRACEPARENT).unwrap().as_str(), PARENT);
        assert_eq!(headers.0.get(TRACESTATE).unwrap().as_str(), "vendor=1");
    }

    #[test]
    fn only_valid_trace_context_is_passed_on() {
        const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        // No test in this crate's unit tests turns tracing on.
        assert!(!is_enabled());
        assert_eq!(
            passed_on(Some(PARENT), Some("vendor=1")),
            [
                (TRACEPARENT, PARENT.to_owned()),
                (TRACESTATE, "vendor=1".to_owned())
            ]
        );
        assert_eq!(
            passed_on(Some(PARENT), None),
            [(TRACEPARENT, PARENT.to_owned())]
        );
        // What could not go in a header, or is not trace context at all.
        let broken = format!("{PARENT}\r\nx-forged: 1");
        assert!(passed_on(Some(&broken), None).is_empty());
        assert!(passed_on(Some("not a traceparent"), Some("vendor=1")).is_empty());
        assert!(passed_on(None, Some("vendor=1")).is_empty());
        // A trailing line end is trimmed; a broken tracestate is left out.
        assert_eq!(
            passed_on(Some(&format!("{PARENT}\r\n")), Some("vendor=1\r\nx: 1")),
            [(TRACEPARENT, PARENT.to_owned())]
        );
    }
}

/// Exporting spans over OTLP/HTTP when the environment asks for it.
#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// Why spans cannot be exported.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot export traces over OTLP: {0}")]
    pub struct TelemetryError(#[source] opentelemetry_otlp::ExporterBuildError);

    /// Flushes and stops the export when dropped.
    #[derive(Debug)]
    pub struct TelemetryGuard {
        provider: SdkTracerProvider,
    }

    impl Drop for TelemetryGuard {
        fn drop(&mut self) {
            let _ = self.provider.shutdown();
        }
    }

    /// With `OTEL_EXPORTER_OTLP_ENDPOINT` (or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set: exports spans there over
    /// OTLP/HTTP (protobuf), in batches, as service `service` unless
    /// `OTEL_SERVICE_NAME` says otherwise, and turns trace context on
    /// ([`super::enable`]). Keep the guard while the process runs: dropping
    /// it sends what is left. Without the variable: `None`, and nothing
    /// costs anything.
    pub fn init_from_env(service: &str) -> Result<Option<TelemetryGuard>, TelemetryError> {
        let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
        if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(TelemetryError)?;
        let name = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| service.to_owned());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(name).build())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        super::enable();
        Ok(Some(TelemetryGuard { provider }))
    }
}

#[cfg(feature = "otlp")]
pub use otlp::{TelemetryError, TelemetryGuard, init_from_env};
