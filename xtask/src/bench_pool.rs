//! P11 (warm pool): `berth serve` with a Docker pool of started members; each claim is
//! timed from the create request until the claimed workspace's API socket answers
//! `GET /v1/self` with the token the claim handed it (read from its token file, as the
//! workspace reads it). Baseline in the same run: a cold create+start of the same kind
//! of workspace until it runs.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::bench::{Row, median};
use crate::bench_api::{Server, percentile};

const POOL_SIZE: u64 = 3;
const TEMPLATE: &str = "while [ ! -s \"$BERTH_TOKEN_FILE\" ]; do sleep 1; done; exec sleep 3600";

/// Removes every container and volume of the daemon's engine when dropped, whatever
/// the run left behind.
struct Containers(Option<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        let Some(engine) = &self.0 else { return };
        let filter = format!("label=dev.berth.engine={engine}");
        let docker = |args: &[&str]| {
            std::process::Command::new("docker")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        for id in docker(&["ps", "-aq", "--filter", &filter]).lines() {
            docker(&["rm", "-f", "-v", id]);
        }
        for v in docker(&["volume", "ls", "-q", "--filter", &filter]).lines() {
            docker(&["volume", "rm", "-f", v]);
        }
    }
}

/// The engine label of the container of workspace `ws`.
fn engine_of(ws: &str) -> Option<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=dev.berth.workspace={ws}"),
            "--format",
            "{{.Label \"dev.berth.engine\"}}",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// `GET /v1/self` over a workspace's socket with `token`; the HTTP status.
async fn self_status(socket: &Path, token: &str) -> Result<u16> {
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting {}", socket.display()))?;
    let request = format!(
        "GET /v1/self HTTP/1.1\r\nHost: berth\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    Ok(status)
}

/// Waits (untimed) until the pool has all its members running.
async fn refilled(server: &Server) -> Result<Vec<String>> {
    let began = Instant::now();
    loop {
        let v = server
            .call(reqwest::Method::GET, "/v1/pools/warm", None)
            .await?;
        if v["ready"] == POOL_SIZE {
            return Ok(v["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect());
        }
        ensure!(
            began.elapsed() < Duration::from_secs(120),
            "the pool did not refill in 120 s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn p11(root: &Path, bin: &Path, quick: bool) -> Result<Row> {
    let image = {
        let out = std::process::Command::new(bin)
            .args(["doctor", "--test-image"])
            .output()?;
        ensure!(
            out.status.success(),
            "P11 needs Docker and the test image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let dir = root.join("target/bench/tmp-p11");
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::start(
        bin,
        &dir,
        &[
            "--docker-image",
            &image,
            "--reconcile-period",
            "1s",
            "--stop-grace",
            "1s",
        ],
    )
    .await?;
    let mut containers = Containers(None);
    let (claims, colds) = if quick { (5, 3) } else { (30, 10) };
    server
        .call(
            reqwest::Method::PUT,
            "/v1/pools/warm",
            Some(
                json!({"runtime": "docker", "command": ["sh", "-c", TEMPLATE], "size": POOL_SIZE}),
            ),
        )
        .await?;
    let members = refilled(&server).await?;
    containers.0 = members.iter().find_map(|m| engine_of(m));
    ensure!(
        containers.0.is_some(),
        "no container for the pool's members"
    );

    let mut claim_ms = Vec::new();
    for i in 0..claims {
        let ready = refilled(&server).await?;
        let began = Instant::now();
        let v = server
            .call(
                reqwest::Method::POST,
                "/v1/workspaces",
                Some(json!({"name": format!("p11-claim-{i}"), "pool": "warm"})),
            )
            .await?;
        let id = v["workspace"]["id"].as_str().context("id")?.to_owned();
        let run = dir.join("run").join(&id);
        let token = std::fs::read_to_string(run.join("token"))
            .with_context(|| format!("the claim of {id} left no token file: {v}"))?;
        let status = self_status(&run.join("api.sock"), token.trim()).await?;
        claim_ms.push(began.elapsed().as_secs_f64() * 1e3);
        ensure!(
            status == 200,
            "GET /v1/self with the claimed token: {status}"
        );
        ensure!(
            ready.contains(&id),
            "the create did not claim a member: {v}"
        );
        server
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/workspaces/{id}?force=true"),
                None,
            )
            .await?;
    }

    // Cold: the same kind of container (another env, so no pool matches), created and
    // started until it runs.
    let mut cold_ms = Vec::new();
    for i in 0..colds {
        let began = Instant::now();
        let v = server
            .call(
                reqwest::Method::POST,
                "/v1/workspaces",
                Some(json!({"name": format!("p11-cold-{i}"), "runtime": "docker",
                    "command": ["sh", "-c", TEMPLATE], "env": {"COLD": "1"}})),
            )
            .await?;
        let id = v["workspace"]["id"].as_str().context("id")?.to_owned();
        let w = server
            .call(
                reqwest::Method::GET,
                &format!("/v1/workspaces/{id}/wait?state=running&timeout=60s"),
                None,
            )
            .await?;
        cold_ms.push(began.elapsed().as_secs_f64() * 1e3);
        ensure!(w["reached"] == true, "cold start: {w}");
        server
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/workspaces/{id}?force=true"),
                None,
            )
            .await?;
    }
    server
        .call(reqwest::Method::DELETE, "/v1/pools/warm", None)
        .await?;
    // Let the daemon drain its members before it goes (the guard removes the rest).
    if let Some(engine) = &containers.0 {
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(60) {
            let out = std::process::Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=dev.berth.engine={engine}"),
                ])
                .output()?;
            if out.stdout.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(server);
    drop(containers);
    let _ = std::fs::remove_dir_all(&dir);

    let (p50, p99) = (
        percentile(claim_ms.clone(), 50.0),
        percentile(claim_ms, 99.0),
    );
    let cold = median(cold_ms);
    let faster = cold / p50;
    let mut failed = Vec::new();
    if p50 > 20.0 {
        failed.push("p50 above 20 ms");
    }
    if p99 > 50.0 {
        failed.push("p99 above 50 ms");
    }
    if faster < 20.0 {
        failed.push("less than 20× faster than cold");
    }
    Ok(Row {
        id: "P11",
        case: format!(
            "warm pool: claim a started docker workspace (pool of {POOL_SIZE}, busybox test image) until its socket answers GET /v1/self with the claimed token"
        ),
        berth: format!("p50 {p50:.1} ms, p99 {p99:.1} ms per claim ({claims} claims)"),
        baseline: format!(
            "{cold:.1} ms: a cold create+start until running ({colds} starts); {faster:.0}× faster"
        ),
        ratio: Some(p50 / cold),
        target: "p50 ≤ 20 ms, p99 ≤ 50 ms; ≥ 20× faster than cold".into(),
        verdict: if failed.is_empty() {
            "pass".into()
        } else {
            format!("FAIL ({})", failed.join("; "))
        },
        extra: json!({ "p50_ms": p50, "p99_ms": p99, "cold_ms": cold, "times_faster": faster, "claims": claims, "colds": colds }),
    })
}
