//! Tests against a real Docker daemon. Each test has its own label prefix and engine
//! id, and removes every container and volume carrying its prefix when it ends, even
//! on failure. Without a daemon they print SKIPPED loudly and pass, unless
//! `BERTH_REQUIRE_DOCKER=1` (set by `.ci/run`), where a missing daemon fails them.

mod contract;
mod engine;
mod runtime;

use std::sync::Arc;

use berth_core::ids::EngineId;
use berth_docker::test_image::ensure_test_image;
use berth_docker::{DockerConfig, DockerRuntime};

#[derive(Debug)]
pub struct Fixture {
    pub rt: Arc<DockerRuntime>,
    pub prefix: String,
    pub engine: EngineId,
    pub image: String,
}

impl Fixture {
    /// A runtime with a fresh label prefix, or `None` (after a loud notice) when no
    /// daemon answers and Docker is not required.
    pub async fn new(test: &str) -> Option<Self> {
        let prefix = format!(
            "test.berth.{}",
            EngineId::generate().as_str().replace('-', "")
        );
        let config = DockerConfig {
            label_prefix: prefix.clone(),
            ..DockerConfig::default()
        };
        Self::with_config(test, config).await
    }

    pub async fn with_config(test: &str, mut config: DockerConfig) -> Option<Self> {
        let probe = DockerRuntime::new(config.clone());
        if let Err(e) = probe.version().await {
            if std::env::var("BERTH_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
                panic!("BERTH_REQUIRE_DOCKER=1 but the Docker daemon is unreachable: {e}");
            }
            eprintln!("\n*** SKIPPED {test}: no Docker daemon ({e}) ***\n");
            return None;
        }
        let image = ensure_test_image(&probe).await.expect("the test image");
        config.default_image = Some(image.clone());
        let prefix = config.label_prefix.clone();
        Some(Self {
            rt: Arc::new(DockerRuntime::new(config)),
            prefix,
            engine: EngineId::generate(),
            image,
        })
    }

    /// `docker <args>` by CLI; stdout.
    pub fn docker(&self, args: &[&str]) -> String {
        docker(args)
    }

    /// Ids of every container carrying this test's prefix.
    pub fn containers(&self) -> Vec<String> {
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={}.engine", self.prefix),
        ])
        .lines()
        .map(str::to_owned)
        .collect()
    }
}

pub fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let label = format!("label={}.engine", self.prefix);
        let ids = docker(&["ps", "-aq", "--filter", &label]);
        for id in ids.lines() {
            docker(&["rm", "-f", "-v", id]);
        }
        let volumes = docker(&["volume", "ls", "-q", "--filter", &label]);
        for v in volumes.lines() {
            docker(&["volume", "rm", "-f", v]);
        }
    }
}
