//! `pra serve`: the role endpoint for load balancers and the monitoring endpoints, over HTTP —
//! `/active` (200 on the active site, 503 otherwise: what HAProxy's `httpchk` or Patroni-style
//! health checks read, so that traffic follows the role), `/metrics`, `/status`, `/healthz`.
//! Every request reads the store afresh: a cached 200 after a flip would send traffic to the
//! old site.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pra_core::{Error, Verdict};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::config::Config;
use crate::exit;

/// `pra serve` options.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:9480]. Keep it on loopback or behind the load
    /// balancer's network: there is no TLS and no authentication.
    #[arg(long, value_name = "ADDR", env = "PRA_SERVE_LISTEN")]
    listen: Option<String>,
    /// Seconds /active keeps answering 503 after it first sees its site become active. Break
    /// before make at the load balancer: the old site's checks fail as soon as it is deactivated,
    /// but the balancer needs `inter × fall` to mark it down; this must be longer (HAProxy's
    /// defaults, inter 2s fall 3: more than 6).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 10.0,
        env = "PRA_SERVE_SETTLE"
    )]
    settle: f64,
}

/// When this process first saw its site active, and under which token (monotonic clock).
type ActiveSince = std::sync::Mutex<Option<(u64, std::time::Instant)>>;

/// Requests served at once: a slow store ties up at most this many threads.
const THREADS: usize = 4;

/// Serves until SIGTERM or SIGINT, then exits 0.
pub fn serve(cfg: &Config, args: &ServeArgs) -> Result<u8, Error> {
    let addr = args.listen.as_deref().unwrap_or("127.0.0.1:9480");
    let settle = Duration::try_from_secs_f64(args.settle).map_err(|_| {
        Error::InvalidArgument(format!(
            "--settle {}: expected seconds, 0 or more",
            args.settle
        ))
    })?;
    let since = ActiveSince::default();
    let server = Server::http(addr)
        .map_err(|e| Error::InvalidArgument(format!("pra serve: cannot listen on {addr}: {e}")))?;
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Error::Internal(format!("signal handler: {e}")))?;
    }
    tracing::info!(%addr, "serving /active, /metrics, /status, /healthz");
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let (server, stop, since) = (server.clone(), stop.clone(), &since);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match server.recv_timeout(Duration::from_millis(200)) {
                        Ok(Some(request)) => answer(cfg, request, since, settle),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "request not received"),
                    }
                }
            });
        }
    });
    Ok(exit::OK)
}

fn answer(cfg: &Config, request: Request, since: &ActiveSince, settle: Duration) {
    let (code, kind, body) = route(cfg, request.method(), request.url(), since, settle);
    let mut response = Response::from_string(body).with_status_code(code);
    if let Ok(header) = Header::from_bytes(&b"Content-Type"[..], kind.as_bytes()) {
        response = response.with_header(header);
    }
    if let Err(e) = request.respond(response) {
        tracing::debug!(error = %e, "response not sent (client gone)");
    }
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// The status code, content type and body for a request.
fn route(
    cfg: &Config,
    method: &Method,
    url: &str,
    since: &ActiveSince,
    settle: Duration,
) -> (u16, &'static str, String) {
    let path = url.split('?').next().unwrap_or("");
    if !matches!(method, Method::Get | Method::Head) {
        return (405, TEXT, "only GET\n".into());
    }
    match path {
        "/healthz" => (200, TEXT, "ok\n".into()),
        "/active" => active(cfg, since, settle),
        "/metrics" => {
            let (text, _) = crate::commands::exposition(cfg);
            (200, "text/plain; version=0.0.4; charset=utf-8", text)
        }
        "/status" => match crate::commands::document(cfg) {
            Ok((s, failing)) => (
                if failing { 503 } else { 200 },
                JSON,
                serde_json::to_string(&s).unwrap_or_default(),
            ),
            Err(e) => (500, JSON, error_json(&e)),
        },
        _ => (
            404,
            TEXT,
            "not found: /active, /metrics, /status, /healthz\n".into(),
        ),
    }
}

fn error_json(e: &Error) -> String {
    serde_json::json!({"error": e.to_string(), "kind": e.kind().name()}).to_string()
}

/// 200 only when this host's site holds the role, and has for `settle` as this process saw it;
/// 503 for standby, settling, no site configured, a store that cannot be read — deny by
/// default, as every job does (the same check as `pra check`).
fn active(cfg: &Config, since: &ActiveSince, settle: Duration) -> (u16, &'static str, String) {
    let verdict = cfg
        .this_site()
        .and_then(|site| Ok((cfg.open_store()?, site)))
        .and_then(|(store, site)| Ok((pra_core::check(&*store, &site)?, site)));
    match verdict {
        Ok((Verdict::Run { token }, site)) => {
            let now = std::time::Instant::now();
            let mut seen = since.lock().unwrap_or_else(|p| p.into_inner());
            let first = match *seen {
                Some((t, at)) if t == token.0 => at,
                _ => {
                    *seen = Some((token.0, now));
                    now
                }
            };
            let settled = now.duration_since(first) >= settle;
            (
                if settled { 200 } else { 503 },
                JSON,
                serde_json::json!({"site": site.as_str(), "active": true, "settled": settled, "active_site": site.as_str(), "token": token.0}).to_string(),
            )
        }
        Ok((Verdict::Standby { active, token }, site)) => (
            503,
            JSON,
            serde_json::json!({"site": site.as_str(), "active": false, "active_site": active.as_ref().map(|s| s.as_str()), "token": token.0}).to_string(),
        ),
        Err(e) => (503, JSON, error_json(&e)),
    }
}
