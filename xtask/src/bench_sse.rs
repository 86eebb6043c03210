//! P7's baseline: the same fan-out with nothing but tokio and the kernel. A process of
//! its own (`xtask sse-baseline`, started by the bench like `berth serve`) accepts the
//! subscribers' connections, answers each with a chunked `text/event-stream`, and on
//! every `emit` line on its stdin writes one event, formatted once, to every
//! connection. No routing, no auth, no engine, no serialisation per subscriber: what is
//! left is a socket write per subscriber and event, and the wakeups around it, which is
//! the floor any SSE server pays on this machine. The bench drives it with the same
//! client and the same cadence as berth.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// `xtask sse-baseline --bytes N`: serves until its stdin closes. Prints its URL on
/// the first line of stdout; each event's SSE message is `N` bytes long (berth's
/// average, measured by the bench).
pub(crate) fn serve(args: &[String]) -> Result<()> {
    let bytes: usize = match args {
        [flag, n] if flag == "--bytes" => n.parse().context("--bytes N")?,
        _ => anyhow::bail!("usage: xtask sse-baseline --bytes N"),
    };
    // Two workers, as `berth serve` has on this machine.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(bytes))
}

async fn run(bytes: usize) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("http://{}\n", listener.local_addr()?).as_bytes())
        .await?;
    stdout.flush().await?;
    // Room for every event of a run: a subscriber never lags.
    let (events, _) = broadcast::channel::<Arc<[u8]>>(4096);
    let mut connections = tokio::task::JoinSet::new();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut seq = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    connections.spawn(connection(socket, events.subscribe()));
                }
                // A connection that failed before it was accepted (its subscriber
                // then fails the run with a clear error); the server goes on.
                Err(e) => eprintln!("sse-baseline: accept: {e}"),
            },
            line = stdin.next_line() => match line? {
                Some(_) => {
                    seq += 1;
                    let _ = events.send(message(seq, bytes));
                }
                None => return Ok(()),
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

/// One event as an HTTP chunk: `id`, `event` and a `data` line of JSON carrying `at`
/// (now), padded so the SSE message is `bytes` long.
fn message(seq: u64, bytes: usize) -> Arc<[u8]> {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let head =
        format!("id: {seq}\nevent: workspace\ndata: {{\"seq\":{seq},\"at\":\"{at}\",\"pad\":\"");
    let tail = "\"}\n\n";
    let pad = bytes.saturating_sub(head.len() + tail.len());
    let sse = format!("{head}{}{tail}", "x".repeat(pad));
    Arc::from(format!("{:x}\r\n{sse}\r\n", sse.len()).into_bytes())
}

async fn connection(
    mut socket: TcpStream,
    mut events: broadcast::Receiver<Arc<[u8]>>,
) -> std::io::Result<()> {
    // As `berth serve` does.
    socket.set_nodelay(true)?;
    let mut request = Vec::new();
    let mut buf = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    socket
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await?;
    loop {
        match events.recv().await {
            Ok(chunk) => socket.write_all(&chunk).await?,
            // Never with a channel longer than the run: a subscriber that missed
            // events would make the baseline look faster than it is.
            Err(broadcast::error::RecvError::Lagged(n)) => {
                return Err(std::io::Error::other(format!("lagged by {n} events")));
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// What the subscribers of one fan-out saw.
pub(crate) struct FanOut {
    /// Subscribers that got every event once, in order.
    pub(crate) complete: usize,
    /// Every delivery's latency in ms (arrival − the event's `at`).
    pub(crate) latencies: Vec<f64>,
    /// SSE bytes received, over every subscriber.
    bytes: usize,
    /// From the first event's trigger to the last subscriber's last event.
    pub(crate) wall_s: f64,
    /// When each event was triggered, from the first.
    pub(crate) triggered: Vec<Duration>,
}

impl FanOut {
    pub(crate) fn percentile(&self, p: f64) -> f64 {
        crate::bench_api::percentile(self.latencies.clone(), p)
    }

    /// The average length of one event's SSE message (keep-alives included).
    pub(crate) fn bytes_per_event(&self) -> usize {
        self.bytes / self.latencies.len().max(1)
    }
}

/// Opens `subscribers` SSE streams on `url`, then calls `trigger(i)` for each of
/// `events` events and waits (at most 60 s) until every subscriber has every event.
/// Fails if one missed an event or got one out of order. Events are triggered 10 ms
/// after the previous trigger returned, or at the offsets of `schedule` (another run's
/// `triggered`: the same load at the same moments).
pub(crate) async fn fan_out(
    url: &str,
    token: Option<&str>,
    subscribers: usize,
    events: usize,
    schedule: Option<&[Duration]>,
    mut trigger: impl AsyncFnMut(usize) -> Result<()>,
) -> Result<FanOut> {
    let mut set = tokio::task::JoinSet::new();
    let client = reqwest::Client::builder().build()?;
    for _ in 0..subscribers {
        let mut request = client.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let resp = tokio::time::timeout(Duration::from_secs(30), request.send())
            .await
            .context("a subscriber waited 30 s for its connection")??;
        ensure!(resp.status().is_success(), "subscribe: {}", resp.status());
        set.spawn(subscribe(resp, events));
    }
    let began = tokio::time::Instant::now();
    let mut triggered = Vec::with_capacity(events);
    for i in 0..events {
        if let Some(at) = schedule.and_then(|s| s.get(i)) {
            tokio::time::sleep_until(began + *at).await;
        }
        triggered.push(began.elapsed());
        trigger(i).await?;
        if schedule.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut seen = FanOut {
        complete: 0,
        latencies: Vec::new(),
        bytes: 0,
        wall_s: 0.0,
        triggered,
    };
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(r) = set.join_next().await {
            let (got, bytes) = r??;
            let mut seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
            seqs.dedup();
            ensure!(
                seqs.len() == events && seqs.windows(2).all(|w| w[0] < w[1]),
                "a subscriber got {} distinct events out of {events}, or out of order",
                seqs.len()
            );
            seen.complete += 1;
            seen.bytes += bytes;
            seen.latencies.extend(got.into_iter().map(|(_, ms)| ms));
        }
        anyhow::Ok(())
    })
    .await;
    seen.wall_s = began.elapsed().as_secs_f64();
    match outcome {
        Ok(r) => r?,
        Err(_) => bail!(
            "only {} of {subscribers} subscribers got all {events} events within 60 s",
            seen.complete
        ),
    }
    Ok(seen)
}

/// One SSE subscriber: reads until it has seen `expected` events; returns, per event
/// id, the delivery latency in ms (arrival − the event's `at`), and the bytes read.
async fn subscribe(resp: reqwest::Response, expected: usize) -> Result<(Vec<(u64, f64)>, usize)> {
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let mut bytes = 0;
    while got.len() < expected {
        let chunk = stream.next().await.context("the stream ended early")??;
        let arrived = chrono::Utc::now();
        bytes += chunk.len();
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let message: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&message);
            let Some(data) = text.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue; // a keep-alive comment
            };
            // This process shares the machine's cores with the server: it reads only the
            // two fields it needs (the id line, the `at` field) instead of parsing
            // thousands of whole events a second.
            let seq: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .context("an event without an id line")?
                .trim()
                .parse()?;
            let at: chrono::DateTime<chrono::Utc> = data
                .split_once("\"at\":\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .context("an event without at")?
                .0
                .parse()?;
            let ms = (arrived - at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3;
            got.push((seq, ms));
        }
    }
    Ok((got, bytes))
}

/// The baseline run: `xtask sse-baseline` in a process of its own, `subscribers`
/// streams, an event of `bytes` bytes at each offset of `schedule`.
pub(crate) async fn raw_fan_out(
    subscribers: usize,
    schedule: &[Duration],
    bytes: usize,
) -> Result<FanOut> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["sse-baseline", "--bytes", &bytes.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting xtask sse-baseline")?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let url = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("sse-baseline printed nothing in 10 s")??
        .context("sse-baseline exited before printing its URL")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let url = format!("{url}/events");
    let events = schedule.len();
    let seen = fan_out(
        &url,
        None,
        subscribers,
        events,
        Some(schedule),
        async |_| {
            stdin.write_all(b"emit\n").await?;
            stdin.flush().await?;
            Ok(())
        },
    )
    .await;
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_one_chunk_of_the_asked_size() {
        let chunk = message(7, 600);
        let text = std::str::from_utf8(&chunk).unwrap();
        let (size, rest) = text.split_once("\r\n").unwrap();
        let sse = rest.strip_suffix("\r\n").unwrap();
        assert_eq!(usize::from_str_radix(size, 16).unwrap(), sse.len());
        assert_eq!(sse.len(), 600);
        assert!(sse.starts_with("id: 7\n") && sse.ends_with("\"}\n\n"));
        assert!(sse.contains("\"at\":\""));
    }
}
