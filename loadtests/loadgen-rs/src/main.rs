//! `voxgate-loadgen`: a load generator for voxgate benchmarks on loopback.
//!
//! ```text
//! voxgate-loadgen [--spec PATH|-] [--threads N] [--control] [--max-seconds S]
//! ```
//!
//! Reads a JSON spec (the fields of `LoadSpec` in `loadtests/loadgen.py`, plus
//! `inflight_messages` and `warmup_s`) from `--spec` (default: stdin), opens one WebSocket
//! per session to `ws://127.0.0.1:PORT` (no other host is accepted), runs the load and
//! prints one JSON object with the fields of `LoadResult` on stdout.
//!
//! With `--control` (how `loadgen.py` drives it) the spec is the first line of stdin and
//! stdout carries JSON lines: `{"ready": n}` once every stream is open, then the run starts
//! on a `start` line, `{"progress": {...}}` every `progress_s`, and `{"result": {...}}`
//! last; an idle run holds its streams until a `stop` line. A closed stdin aborts the run.
//! Every phase is bounded in time and the process exits by itself.

mod frame;
mod spec;
mod stats;
mod stream;

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout_at, Instant};

use spec::LoadSpec;
use stats::{round3, Histogram};
use stream::{Ctx, Go, Live, Outcome};

/// Streams opening at once.
const CONNECT_CONCURRENCY: usize = 64;

const USAGE: &str =
    "usage: voxgate-loadgen [--spec PATH|-] [--threads N] [--control] [--max-seconds S]
  --spec PATH     the JSON load spec (default -: stdin)
  --threads N     runtime worker threads (default 1: one core at most)
  --control       line protocol on stdin/stdout for a parent process (see the crate docs)
  --max-seconds S hard bound on the whole run (default: from the spec)";

struct Args {
    spec: String,
    threads: usize,
    control: bool,
    max_seconds: Option<f64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        spec: "-".into(),
        threads: 1,
        control: false,
        max_seconds: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--spec" => args.spec = value("--spec")?,
            "--threads" => {
                args.threads = value("--threads")?
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or("--threads: 1..=64")?;
            }
            "--control" => args.control = true,
            "--max-seconds" => {
                let s: f64 = value("--max-seconds")?
                    .parse()
                    .map_err(|_| "--max-seconds: a number")?;
                if !(s.is_finite() && s > 0.0 && s <= spec::MAX_RUN_S * 2.0) {
                    return Err("--max-seconds: above 0, at most 172800".into());
                }
                args.max_seconds = Some(s);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("voxgate-loadgen: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (text, commands) = match read_spec(&args) {
        Ok(read) => read,
        Err(e) => {
            eprintln!("voxgate-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let spec = match LoadSpec::parse(&text) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("voxgate-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("voxgate-loadgen: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let max_seconds = args.max_seconds.unwrap_or_else(|| default_bound_s(&spec));
    let control = args.control;
    let result = runtime.block_on(run(spec, control, commands, max_seconds));
    // Streams still closing must not hold the process up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let ok = result["errors"].as_array().is_some_and(|e| e.is_empty());
    let line = if control {
        json!({ "result": result })
    } else {
        result
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The spec's text and, in control mode, the channel of the parent's later lines.
fn read_spec(args: &Args) -> Result<(String, Option<mpsc::UnboundedReceiver<String>>), String> {
    if args.control {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut first = String::new();
        let mut stdin = std::io::stdin().lock();
        stdin
            .read_line(&mut first)
            .map_err(|e| format!("stdin: {e}"))?;
        drop(stdin);
        // A thread, not the runtime: the parent's lines must never wait on the load.
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim().to_owned()).is_err() {
                    break;
                }
            }
        });
        return Ok((first, Some(rx)));
    }
    let mut text = String::new();
    let read = if args.spec == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::File::open(&args.spec).and_then(|mut f| f.read_to_string(&mut text).map(|_| ()))
    };
    read.map_err(|e| format!("reading the spec {}: {e}", args.spec))?;
    Ok((text, None))
}

/// How long a run may take in all, from its spec: its own length plus every bounded phase.
fn default_bound_s(spec: &LoadSpec) -> f64 {
    let phases = stream::CONNECT_TIMEOUT
        + stream::DRAIN_TIMEOUT
        + stream::COMPLETE_TIMEOUT
        + stream::CLOSE_TIMEOUT;
    let connect = 0.02 * spec.session_ids.len() as f64;
    let length = match (spec.duration_s, spec.total_frames, spec.rate) {
        (Some(d), _, _) => d,
        (None, Some(total), Some(rate)) => 1.5 * total as f64 / rate,
        _ => 3600.0,
    };
    spec.warmup_s + length + connect + phases.as_secs_f64() + 30.0
}

/// Waits for the parent's `word` in control mode until `deadline`; false if stdin closed or
/// time ran out.
async fn parent_says(
    commands: &mut Option<mpsc::UnboundedReceiver<String>>,
    word: &str,
    deadline: Instant,
) -> bool {
    let Some(rx) = commands else {
        return true;
    };
    let wait = async {
        while let Some(line) = rx.recv().await {
            if line == word {
                return true;
            }
        }
        false
    };
    timeout_at(deadline, wait).await.unwrap_or(false)
}

fn progress(live: &Live) -> Value {
    json!({"progress": {
        "sent": live.sent.load(Relaxed),
        "acked": live.acked.load(Relaxed),
        "messages": live.messages.load(Relaxed),
        "nacks": live.nacks.load(Relaxed),
        "errors": live.errors.load(Relaxed),
    }})
}

async fn run(
    spec: LoadSpec,
    control: bool,
    mut commands: Option<mpsc::UnboundedReceiver<String>>,
    max_seconds: f64,
) -> Value {
    let hard_end = Instant::now() + Duration::from_secs_f64(max_seconds);
    let n = spec.session_ids.len();
    let addr = spec.addr().expect("checked by LoadSpec::parse");
    // One payload for every frame: random, so nothing downstream can compress it away.
    let payload: Vec<u8> = {
        let mut state = std::process::id() as u64 ^ 0x9E37_79B9_7F4A_7C15;
        (0..spec.frame_bytes)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    let (go_tx, go_rx) = watch::channel(Go::Wait);
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(Ctx {
        addr,
        payload_crc: frame::crc32c(&payload),
        payload,
        live: Live::default(),
        go: go_rx,
        stop: stop_rx,
        connect_gate: Semaphore::new(CONNECT_CONCURRENCY),
        spec,
    });
    let spec = &ctx.spec;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for index in 0..n {
        tasks.spawn(stream::run(ctx.clone(), index, ready_tx.clone()));
    }
    drop(ready_tx);
    let mut errors: Vec<String> = Vec::new();
    let open_by =
        Instant::now() + stream::CONNECT_TIMEOUT + Duration::from_secs_f64(0.02 * n as f64 + 30.0);
    let mut failed = Vec::new();
    for _ in 0..n {
        match timeout_at(open_by.min(hard_end), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => failed.push(e),
            Ok(None) | Err(_) => {
                failed.push("streams not open in time".into());
                break;
            }
        }
    }
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(n);
    let mut start = Instant::now();
    let aborted = if !failed.is_empty() {
        errors.push(format!(
            "{} streams failed to open: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        ));
        true
    } else {
        if control {
            println!("{}", json!({ "ready": n }));
        }
        if parent_says(&mut commands, "start", hard_end).await {
            start = Instant::now();
            false
        } else {
            errors.push("the parent closed stdin before start".into());
            true
        }
    };
    let _ = go_tx.send(if aborted { Go::Abort } else { Go::Start(start) });
    if !aborted && spec.idle && control {
        // Held until the parent says stop (or goes away): progress meanwhile.
        let stop = parent_says(&mut commands, "stop", hard_end);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = sleep(Duration::from_secs_f64(spec.progress_s)) => println!("{}", progress(&ctx.live)),
                _ = tokio::time::sleep_until(hard_end) => break,
            }
        }
        let _ = stop_tx.send(true);
    }
    let mut timed_out = false;
    while !tasks.is_empty() {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(outcome)) => outcomes.push(outcome),
                Some(Err(e)) => errors.push(format!("stream task: {e}")),
                None => break,
            },
            _ = sleep(Duration::from_secs_f64(spec.progress_s)), if control => {
                println!("{}", progress(&ctx.live));
            }
            _ = tokio::time::sleep_until(hard_end), if !timed_out => {
                timed_out = true;
                errors.push(format!("the run took longer than {max_seconds:.0} s: stopped"));
                let _ = stop_tx.send(true);
                // Streams get a moment to record what they have, then are dropped.
                let grace = Instant::now() + Duration::from_secs(3);
                while let Ok(Some(joined)) = timeout_at(grace, tasks.join_next()).await {
                    if let Ok(outcome) = joined {
                        outcomes.push(outcome);
                    }
                }
                tasks.abort_all();
            }
        }
    }
    outcomes.sort_by_key(|o| o.index);
    summarize(spec, start, outcomes, errors)
}

/// The `LoadResult` fields from every stream's outcome.
fn summarize(
    spec: &LoadSpec,
    start: Instant,
    outcomes: Vec<Outcome>,
    mut errors: Vec<String>,
) -> Value {
    let mut hist = Histogram::default();
    let mut nacks: HashMap<String, u64> = HashMap::new();
    let mut closes: HashMap<String, u64> = HashMap::new();
    let (mut sent, mut acked, mut in_window, mut messages) = (0u64, 0u64, 0u64, 0u64);
    let (mut late, mut max_lag_s, mut verified) = (0u64, 0f64, 0u64);
    let mut last_ack: Option<Instant> = None;
    for o in &outcomes {
        hist.merge(&o.hist);
        for (reason, n) in &o.nacks {
            *nacks.entry(reason.clone()).or_insert(0) += n;
        }
        if let Some(code) = o.close {
            *closes.entry(code.to_string()).or_insert(0) += 1;
        }
        sent += o.sent;
        acked += o.acked;
        in_window += o.acked_in_window;
        messages += o.messages;
        late += o.late;
        max_lag_s = max_lag_s.max(o.max_lag_s);
        verified += u64::from(o.verified);
        last_ack = last_ack.max(o.last_ack);
        errors.extend(o.errors.iter().take(3).cloned());
    }
    let window_start = start + Duration::from_secs_f64(spec.warmup_s);
    let elapsed = match spec.duration_s {
        Some(d) if !spec.idle => d,
        _ if spec.idle => 0.0,
        // Counted to the last ack: a fixed-size run is done when everything is acked.
        _ => last_ack.map_or(0.0, |t| {
            t.saturating_duration_since(window_start).as_secs_f64()
        }),
    };
    let unacked = sent.saturating_sub(acked);
    if unacked > 0 && !spec.idle {
        errors.push(format!("{unacked} frames sent and never acked"));
    }
    errors.truncate(20);
    let fb = u64::from(spec.frame_bytes);
    let mut latency = Map::new();
    for (name, ms) in hist.percentiles_ms() {
        latency.insert(name.into(), json!(ms));
    }
    if hist.total() > 0 {
        latency.insert("n".into(), json!(hist.total()));
    }
    if spec.rate.is_some() {
        latency.insert("late_messages".into(), json!(late));
        latency.insert("max_send_lag_ms".into(), json!(round3(max_lag_s * 1000.0)));
    }
    let per_s = |x: u64| {
        if elapsed > 0.0 {
            x as f64 / elapsed
        } else {
            0.0
        }
    };
    let cpu_s = process_cpu_s();
    json!({
        "target": spec.target,
        "streams": spec.session_ids.len(),
        "duration_s": round3(elapsed),
        "frames_sent": sent,
        "frames_acked": in_window,
        "bytes_acked": in_window * fb,
        "messages_sent": messages,
        "frames_per_s": (per_s(in_window) * 10.0).round() / 10.0,
        "mb_per_s": round3(per_s(in_window * fb) / 1e6),
        "latency_ms": latency,
        "latency_hist_us": hist.pairs(),
        "nacks": nacks,
        "closes": closes,
        "errors": errors,
        "streams_verified": verified,
        "per_stream_acked": outcomes.iter().map(|o| o.acked).collect::<Vec<_>>(),
        "generator_cpu_s": round3(cpu_s),
        "server_cpu_s": 0.0,
    })
}

/// User plus system CPU seconds of this process so far (every thread), from getrusage.
fn process_cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
