//! HTTPS requests the way a browser makes them, from outside the process: curl, trusting only the
//! test's CA, with HTTP/2 offered by ALPN.

use std::path::Path;

use tokio::process::Command;

/// What one request got: the status and the HTTP version spoken (`"2"`, `"1.1"`).
#[derive(Debug, PartialEq, Eq)]
pub struct Fetched {
    pub status: u16,
    pub http_version: String,
}

/// GETs `url` trusting only `ca_file`; `extra` adds curl options (headers, `--http1.1`). An error
/// carries curl's own message (e.g. the certificate was not trusted).
pub async fn https_get(url: &str, ca_file: &Path, extra: &[&str]) -> Result<Fetched, String> {
    let output = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--output",
            "/dev/null",
        ])
        .args(["--write-out", "%{http_code} %{http_version}"])
        .arg("--cacert")
        .arg(ca_file)
        .args(extra)
        .arg(url)
        .output()
        .await
        .expect("curl must be installed: run scripts/test, which installs it");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (status, http_version) = stdout.split_once(' ').expect("curl's --write-out");
    Ok(Fetched {
        status: status.parse().expect("an HTTP status"),
        http_version: http_version.to_owned(),
    })
}
