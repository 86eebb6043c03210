//! A Docker workspace through `berth serve`: create, output, restart, delete.

use berth_tests::{Daemon, DockerCleanup, containers_of, docker_test_image};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_workspace_runs_restarts_and_is_deleted_through_the_api() {
    let Some(image) =
        docker_test_image("a_docker_workspace_runs_restarts_and_is_deleted_through_the_api")
    else {
        return;
    };
    let d = Daemon::start(&["--docker-image", &image])
        .await
        .expect("daemon");
    let (s, v) = d
        .post(
            "/v1/workspaces",
            json!({"name": "boxed", "runtime": "docker", "start": false,
                   "command": ["sh", "-c", "echo hello from the container; exec sleep 600"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["workspace"]["id"].as_str().expect("id").to_owned();
    let _cleanup = DockerCleanup(id.clone());
    let (s, v) = d
        .post(&format!("/v1/workspaces/{id}/start"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["workspace"]["state"], "running", "{v}");
    let mut output = String::new();
    for _ in 0..100 {
        let (_, v) = d.get(&format!("/v1/workspaces/{id}/output?lines=20")).await;
        output = v.to_string();
        if output.contains("hello from the container") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(output.contains("hello from the container"), "{output}");
    let (s, v) = d
        .post(&format!("/v1/workspaces/{id}/restart"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["workspace"]["state"], "running", "{v}");
    assert_eq!(v["workspace"]["incarnation"], 2, "{v}");
    assert_eq!(containers_of(&id), 1, "one container after the restart");
    let (s, v) = d.delete(&format!("/v1/workspaces/{id}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(containers_of(&id), 0, "delete removed the container");
}
