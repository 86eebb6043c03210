//! A tiny image built without a registry: the static `busybox` binary (Debian's
//! `busybox-static`) and its applet links, imported through the Docker API as a root
//! file system tarball. The tests and `cargo xtask test-image` use it.

use std::path::{Path, PathBuf};

use berth_core::ports::RuntimeError;
use bollard::image::CreateImageOptions;
use futures_util::StreamExt;

use crate::DockerRuntime;

/// The image's reference.
pub const TEST_IMAGE: &str = "berth-test/busybox:1";

/// Where `busybox-static` installs the binary.
pub fn busybox_path() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// The command that installs the binary, for error messages.
pub const INSTALL_HINT: &str = "sudo apt-get install -y busybox-static";

fn other(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Other {
        resource: TEST_IMAGE.into(),
        message: message.into(),
    }
}

/// A root file system tarball: `/bin/busybox`, a link per applet, `/tmp` (1777),
/// `/workspace`, and a minimal `/etc/passwd`.
///
/// # Errors
/// The binary cannot be read or run.
pub fn rootfs_tar(busybox: &Path) -> Result<Vec<u8>, RuntimeError> {
    let binary = std::fs::read(busybox)
        .map_err(|e| other(format!("cannot read {}: {e}", busybox.display())))?;
    let listed = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| other(format!("cannot run {} --list: {e}", busybox.display())))?;
    if !listed.status.success() {
        return Err(other(format!("{} --list failed", busybox.display())));
    }
    let applets = String::from_utf8_lossy(&listed.stdout).into_owned();
    let mut tar = tar::Builder::new(Vec::new());
    let io = |e: std::io::Error| other(format!("building the tarball: {e}"));
    for (dir, mode) in [
        ("bin", 0o755),
        ("tmp", 0o1777),
        ("workspace", 0o755),
        ("etc", 0o755),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_cksum();
        tar.append_data(&mut h, format!("{dir}/"), std::io::empty())
            .map_err(io)?;
    }
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_size(binary.len() as u64);
    h.set_cksum();
    tar.append_data(&mut h, "bin/busybox", binary.as_slice())
        .map_err(io)?;
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .map_err(io)?;
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(passwd.len() as u64);
    h.set_cksum();
    tar.append_data(&mut h, "etc/passwd", passwd.as_slice())
        .map_err(io)?;
    tar.into_inner().map_err(io)
}

/// Imports the test image unless it exists; returns its reference.
///
/// # Errors
/// No busybox binary (the message names the install command), or Docker fails.
pub async fn ensure_test_image(rt: &DockerRuntime) -> Result<String, RuntimeError> {
    let docker = rt.docker().await?;
    if rt
        .call("image inspect", docker.inspect_image(TEST_IMAGE))
        .await
        .is_ok()
    {
        return Ok(TEST_IMAGE.into());
    }
    let busybox = busybox_path().ok_or_else(|| {
        other(format!(
            "no static busybox binary at /bin/busybox; install it with: {INSTALL_HINT}"
        ))
    })?;
    let tar = rootfs_tar(&busybox)?;
    let (repo, tag) = TEST_IMAGE.split_once(':').unwrap_or((TEST_IMAGE, "latest"));
    let import = async {
        let mut stream = docker.create_image(
            Some(CreateImageOptions {
                from_src: "-",
                repo,
                tag,
                ..Default::default()
            }),
            Some(tar.into()),
            None,
        );
        while let Some(item) = stream.next().await {
            item?;
        }
        Ok(())
    };
    rt.call("image import", import).await?;
    Ok(TEST_IMAGE.into())
}
