//! `berth pool ...`: warm pools of workspaces created (and started) ahead of demand.

use serde_json::Value;

use super::{Client, enc, env_pairs};

/// `berth pool ...`.
#[derive(Debug, clap::Subcommand)]
pub enum PoolCommand {
    /// List the pools with their unclaimed members.
    Ls,
    /// Create or change a pool: keep SIZE members of this template. A create with the
    /// same fields (or `berth ws create NAME --pool POOL`) claims one.
    Set {
        /// Pool name: 1-54 of [a-z0-9-], starting with a letter.
        name: String,
        /// How many unclaimed members to keep (0 to 256).
        #[arg(long)]
        size: u32,
        /// Runtime.
        #[arg(long, default_value = "tmux")]
        runtime: String,
        /// Image (docker).
        #[arg(long)]
        image: Option<String>,
        /// Environment, KEY=VALUE (repeatable).
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// Keep the members created only, not running (the only kind a tmux pool has).
        #[arg(long)]
        no_start: bool,
        /// argv (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Remove a pool; its unclaimed members are deleted.
    Rm {
        /// Pool name.
        name: String,
    },
}

fn print_pools(pools: &[Value]) {
    println!(
        "{:<24} {:<8} {:>5} {:>5}  {:<7} MEMBERS",
        "POOL", "RUNTIME", "READY", "SIZE", "STARTED"
    );
    for p in pools {
        let members: Vec<String> = p["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                format!(
                    "{}({})",
                    m["name"].as_str().unwrap_or(""),
                    m["state"].as_str().unwrap_or("")
                )
            })
            .collect();
        println!(
            "{:<24} {:<8} {:>5} {:>5}  {:<7} {}",
            p["name"].as_str().unwrap_or(""),
            p["runtime"].as_str().unwrap_or(""),
            p["ready"].as_u64().unwrap_or(0),
            p["size"].as_u64().unwrap_or(0),
            if p["start"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "no"
            },
            if members.is_empty() {
                "-".to_owned()
            } else {
                members.join(" ")
            }
        );
    }
}

impl Client {
    /// Runs `berth pool ...`.
    ///
    /// # Errors
    /// Transport or API errors.
    pub async fn pool(&self, cmd: PoolCommand) -> anyhow::Result<()> {
        match cmd {
            PoolCommand::Ls => {
                let v = self.get("/v1/pools").await?;
                self.print(&v, |v| {
                    print_pools(v["items"].as_array().map(Vec::as_slice).unwrap_or(&[]));
                });
            }
            PoolCommand::Set {
                name,
                size,
                runtime,
                image,
                env,
                no_start,
                command,
            } => {
                let mut body = serde_json::json!({
                    "runtime": runtime,
                    "size": size,
                    "start": !no_start,
                    "env": env_pairs(&env)?,
                });
                if let Some(image) = image {
                    body["image"] = Value::from(image);
                }
                if !command.is_empty() {
                    body["command"] = Value::from(command);
                }
                let (_, v) = self
                    .call(
                        reqwest::Method::PUT,
                        &format!("/v1/pools/{}", enc(&name)),
                        Some(&body),
                    )
                    .await?;
                self.print(&v, |p| print_pools(std::slice::from_ref(p)));
            }
            PoolCommand::Rm { name } => {
                self.call(
                    reqwest::Method::DELETE,
                    &format!("/v1/pools/{}", enc(&name)),
                    None,
                )
                .await?;
                if !self.json {
                    println!("pool {name} removed; its unclaimed members are being deleted");
                }
            }
        }
        Ok(())
    }
}
