//! `berth up` and `berth down`: bring up (stop, delete) the workspaces and sessions a
//! workspace file describes, idempotently. `up` creates what is missing, starts what is
//! stopped, recreates a workspace whose spec in the file changed (deleting it first,
//! with the dirty check unless `--force`), and launches the sessions that do not run
//! the file's command. Run twice, the second run changes nothing.
//!
//! ```toml
//! [workspaces.api]
//! dir = "./api"                  # relative to the file
//! command = ["npm", "run", "dev"]
//! env = { PORT = "3000" }
//!
//! [workspaces.api.sessions.tests]
//! command = ["npm", "test", "--", "--watch"]
//!
//! [workspaces.db]
//! runtime = "docker"
//! image = "postgres:16"
//! memory = "512m"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CallError, Client, UsageError, enc, parse_bytes};

/// A workspace file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    workspaces: BTreeMap<String, Entry>,
}

/// One workspace of the file: the fields of `POST /v1/workspaces`, sizes as text.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    runtime: Option<String>,
    dir: Option<String>,
    git: Option<Git>,
    command: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    image: Option<String>,
    memory: Option<String>,
    millicpus: Option<u64>,
    pids: Option<u64>,
    sandbox: Option<String>,
    network: Option<bool>,
    run_as_root: Option<bool>,
    read_only_root: Option<bool>,
    #[serde(default)]
    sessions: BTreeMap<String, SessionEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Git {
    repo: String,
    #[serde(rename = "ref")]
    reference: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionEntry {
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// What `up` or `down` did to one workspace.
#[derive(Debug, serde::Serialize)]
struct Done {
    name: String,
    action: String,
}

fn load(path: &Path) -> anyhow::Result<(File, PathBuf)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UsageError(format!(
            "cannot read the workspace file {}: {e}",
            path.display()
        ))
    })?;
    let file: File =
        toml::from_str(&text).map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    let base = path
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    Ok((file, base))
}

impl Entry {
    /// The spec as the API stores it (the keys of a workspace's `spec`).
    fn spec(&self, base: &Path) -> anyhow::Result<Value> {
        let memory = self
            .memory
            .as_deref()
            .map(parse_bytes)
            .transpose()
            .map_err(|e| UsageError(format!("memory: {e}")))?;
        let limits = (memory.is_some() || self.millicpus.is_some() || self.pids.is_some()).then(
            || json!({"memory_bytes": memory, "millicpus": self.millicpus, "pids": self.pids}),
        );
        let dir = self.dir.as_ref().map(|d| {
            let p = Path::new(d);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
            .display()
            .to_string()
        });
        Ok(json!({
            "command": self.command,
            "env": self.env,
            "dir": dir,
            "git": self.git.as_ref().map(|g| json!({"repo": g.repo, "ref": g.reference})),
            "image": self.image,
            "limits": limits,
            "sandbox": self.sandbox,
            "network": self.network,
            "run_as_root": self.run_as_root.unwrap_or(false),
            "read_only_root": self.read_only_root.unwrap_or(false),
        }))
    }
}

/// Whether the workspace's stored `spec` is the file's: every key compared, an absent
/// value the same as an empty one.
fn same_spec(wanted: &Value, stored: &Value) -> bool {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Object(o) => o.is_empty() || o.values().all(|x| x.is_null()),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    let Some(keys) = wanted.as_object() else {
        return false;
    };
    keys.iter().all(|(k, w)| {
        let s = &stored[k];
        (empty(w) && empty(s)) || w == s
    })
}

impl Client {
    /// `berth up`.
    pub(crate) async fn up(&self, path: &Path, force: bool) -> anyhow::Result<()> {
        let (file, base) = load(path)?;
        if file.workspaces.is_empty() {
            return Err(
                UsageError(format!("{} describes no [workspaces.NAME]", path.display())).into(),
            );
        }
        let mut done = Vec::new();
        let mut first_error = None;
        for (name, entry) in &file.workspaces {
            match self.up_one(name, entry, &base, force).await {
                Ok(action) => {
                    if !self.json {
                        println!("{name}: {action}");
                    }
                    done.push(Done {
                        name: name.clone(),
                        action,
                    });
                }
                Err(e) => {
                    eprintln!("error: {name}: {e:#}");
                    first_error.get_or_insert(e);
                }
            }
        }
        if self.json {
            println!("{}", json!({ "items": done, "next_cursor": null }));
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn up_one(
        &self,
        name: &str,
        entry: &Entry,
        base: &Path,
        force: bool,
    ) -> anyhow::Result<String> {
        let spec = entry.spec(base)?;
        let runtime = entry.runtime.clone().unwrap_or_else(|| "tmux".to_owned());
        let existing = match self.get(&format!("/v1/workspaces/{}", enc(name))).await {
            Ok(w) => Some(w),
            Err(e)
                if e.downcast_ref::<CallError>()
                    .is_some_and(|c| c.code == "not_found") =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        let mut actions = Vec::new();
        let recreate = existing.as_ref().is_some_and(|w| {
            w["runtime"].as_str() != Some(runtime.as_str()) || !same_spec(&spec, &w["spec"])
        });
        if recreate {
            let (status, v) = self
                .call(
                    reqwest::Method::DELETE,
                    &format!(
                        "/v1/workspaces/{}?wait=true&timeout=120s&force={force}",
                        enc(name)
                    ),
                    None,
                )
                .await
                .with_context(|| {
                    format!(
                        "its spec changed and it must be recreated, but deleting it failed{}",
                        if force {
                            ""
                        } else {
                            " (unsaved work is kept: commit it, or berth up --force)"
                        }
                    )
                })?;
            if status != 200 {
                anyhow::bail!("deleting it for its new spec did not finish: {v}");
            }
        }
        let state = if existing.is_none() || recreate {
            let mut body = spec.clone();
            body["name"] = json!(name);
            body["runtime"] = json!(runtime);
            body["start"] = json!(true);
            self.call(reqwest::Method::POST, "/v1/workspaces", Some(&body))
                .await?;
            actions.push(if recreate { "recreated" } else { "created" });
            self.settle(name).await?
        } else {
            let w = existing.unwrap_or(Value::Null);
            let state = w["state"].as_str().unwrap_or("").to_owned();
            if state == "running" {
                state
            } else {
                let settled = self.settle(name).await?;
                if settled == "running" {
                    settled
                } else {
                    self.call(
                        reqwest::Method::POST,
                        &format!("/v1/workspaces/{}/start?wait=true&timeout=120s", enc(name)),
                        None,
                    )
                    .await?;
                    actions.push("started");
                    self.settle(name).await?
                }
            }
        };
        if state != "running" {
            anyhow::bail!("it is {state}, not running");
        }
        let launched = self.up_sessions(name, &entry.sessions).await?;
        if launched > 0 {
            actions.push("sessions launched");
        }
        Ok(if actions.is_empty() {
            "up to date".to_owned()
        } else {
            actions.join(", ")
        })
    }

    /// Waits until the workspace settles and returns its state.
    async fn settle(&self, name: &str) -> anyhow::Result<String> {
        let v = self
            .get(&format!(
                "/v1/workspaces/{}/wait?state=settled&timeout=120s",
                enc(name)
            ))
            .await?;
        Ok(v["settled_state"]
            .as_str()
            .or_else(|| v["workspace"]["state"].as_str())
            .unwrap_or("")
            .to_owned())
    }

    /// Launches every session of the file that does not run its command; returns how
    /// many it launched.
    async fn up_sessions(
        &self,
        name: &str,
        sessions: &BTreeMap<String, SessionEntry>,
    ) -> anyhow::Result<usize> {
        if sessions.is_empty() {
            return Ok(0);
        }
        let list = self
            .get(&format!("/v1/workspaces/{}/sessions", enc(name)))
            .await?;
        let running: BTreeMap<String, Value> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["state"] == "running")
            .map(|s| {
                (
                    s["name"].as_str().unwrap_or("").to_owned(),
                    s["command"].clone(),
                )
            })
            .collect();
        let mut launched = 0;
        for (session, wanted) in sessions {
            match running.get(session) {
                Some(cmd) if *cmd == json!(wanted.command) => continue,
                Some(_) => {
                    // Another command under that name: the file changed.
                    self.call(
                        reqwest::Method::DELETE,
                        &format!("/v1/workspaces/{}/sessions/{}", enc(name), enc(session)),
                        None,
                    )
                    .await?;
                }
                None => {}
            }
            let body = json!({"name": session, "command": wanted.command, "env": wanted.env});
            self.call(
                reqwest::Method::POST,
                &format!("/v1/workspaces/{}/sessions", enc(name)),
                Some(&body),
            )
            .await
            .with_context(|| format!("session {session}"))?;
            launched += 1;
        }
        Ok(launched)
    }

    /// `berth down`: stops (with `rm`, deletes) the file's workspaces.
    pub(crate) async fn down(&self, path: &Path, rm: bool, force: bool) -> anyhow::Result<()> {
        let (file, _) = load(path)?;
        let mut done = Vec::new();
        let mut first_error = None;
        for name in file.workspaces.keys() {
            let path = if rm {
                format!(
                    "/v1/workspaces/{}?wait=true&timeout=120s&force={force}",
                    enc(name)
                )
            } else {
                format!("/v1/workspaces/{}/stop?wait=true&timeout=120s", enc(name))
            };
            let method = if rm {
                reqwest::Method::DELETE
            } else {
                reqwest::Method::POST
            };
            let action = match self.call(method, &path, None).await {
                Ok(_) if rm => "deleted".to_owned(),
                Ok(_) => "stopped".to_owned(),
                Err(e)
                    if e.downcast_ref::<CallError>()
                        .is_some_and(|c| c.code == "not_found") =>
                {
                    "not there".to_owned()
                }
                // Already stopped: nothing to do.
                Err(e)
                    if !rm
                        && e.downcast_ref::<CallError>().is_some_and(|c| {
                            c.code == "invalid_transition"
                                && matches!(
                                    c.details["state"].as_str(),
                                    Some("stopped" | "created" | "failed")
                                )
                        }) =>
                {
                    "already stopped".to_owned()
                }
                Err(e) => {
                    eprintln!("error: {name}: {e:#}");
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            if !self.json {
                println!("{name}: {action}");
            }
            done.push(Done {
                name: name.clone(),
                action,
            });
        }
        if self.json {
            println!("{}", json!({ "items": done, "next_cursor": null }));
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_is_the_same_when_every_key_matches_and_absent_equals_empty() {
        let file: File = toml::from_str(
            "[workspaces.a]\ncommand = [\"sleep\", \"1\"]\ndir = \"w\"\nmemory = \"1m\"\n",
        )
        .unwrap();
        let spec = file.workspaces["a"].spec(Path::new("/base")).unwrap();
        assert_eq!(spec["dir"], "/base/w");
        assert_eq!(spec["limits"]["memory_bytes"], 1024 * 1024);
        let mut stored = spec.clone();
        stored["env"] = json!({});
        stored["git"] = Value::Null;
        assert!(same_spec(&spec, &stored));
        stored["command"] = json!(["sleep", "2"]);
        assert!(!same_spec(&spec, &stored));
        let mut stored = spec.clone();
        stored["limits"] = Value::Null;
        assert!(!same_spec(&spec, &stored), "a limit removed is a change");
        assert!(toml::from_str::<File>("[workspaces.a]\nimage = 3\n").is_err());
        assert!(toml::from_str::<File>("[workspaces.a]\nunknown = 1\n").is_err());
    }
}
