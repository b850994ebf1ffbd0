//! The HTTP client of the CLI: tries each `--addr` in turn.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What went wrong talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered with an error.
    #[error("{message} ({code})")]
    Api { status: u16, code: String, message: String },
    /// No node answered.
    #[error("no node answered: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Other(String),
    /// Exit with this status, saying nothing more (`berth exec` passes on the
    /// command's exit code).
    #[error("exit status {0}")]
    Exit(u8),
}

/// A client of the HTTP API of any of several nodes.
pub struct Client {
    addrs: Vec<String>,
    http: reqwest::Client,
    /// One idempotency key per CLI invocation: a write retried on the next node is
    /// applied once. None for the one write that takes none (token creation).
    key: Option<String>,
    /// The API token (`--token`, `BERTH_TOKEN`), sent as `Authorization: Bearer`.
    token: Option<String>,
    /// The CA that signed the nodes' certificates (`--ca-cert`), for `https://` nodes.
    ca: Option<reqwest::Certificate>,
}

/// An HTTP client that trusts `ca` (the only root: the nodes' certificates come from
/// the cluster CA), connecting within 2 s.
fn builder(ca: &Option<reqwest::Certificate>) -> reqwest::ClientBuilder {
    let b = reqwest::Client::builder().connect_timeout(Duration::from_secs(2));
    match ca {
        Some(c) => b.add_root_certificate(c.clone()),
        None => b,
    }
}

/// Reads the `--ca-cert` file.
pub fn read_ca(path: &std::path::Path) -> Result<reqwest::Certificate, CliError> {
    let pem = std::fs::read(path).map_err(|e| CliError::Other(format!("--ca-cert {}: {e}", path.display())))?;
    reqwest::Certificate::from_pem(&pem)
        .map_err(|e| CliError::Other(format!("--ca-cert {}: not a PEM certificate: {e}", path.display())))
}

fn normalize(addr: &str) -> String {
    let a = addr.trim().trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

impl Client {
    pub fn new(addrs: &[String], token: Option<&str>, ca: Option<reqwest::Certificate>) -> Self {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        Client {
            addrs: addrs.iter().filter(|a| !a.trim().is_empty()).map(|a| normalize(a)).collect(),
            http: builder(&ca).timeout(Duration::from_secs(90)).build().expect("HTTP client"),
            key: Some(format!("cli-{}-{nanos:x}", std::process::id())),
            token: token.map(str::trim).filter(|t| !t.is_empty()).map(str::to_string),
            ca,
        }
    }

    /// This client without an idempotency key on its writes.
    pub fn without_idempotency_key(mut self) -> Self {
        self.key = None;
        self
    }

    fn request(&self, client: &reqwest::Client, method: Method, url: String) -> reqwest::RequestBuilder {
        let req = client.request(method, url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends a request to the first node that answers. A 503 (no leader or quorum
    /// where that node is) also moves on to the next node.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, bytes::Bytes), CliError> {
        let mut failures = Vec::new();
        let mut last_503 = None;
        for addr in &self.addrs {
            let mut req = self.request(&self.http, method.clone(), format!("{addr}{path}"));
            if let (true, Some(key)) = (method != Method::GET, &self.key) {
                req = req.header("Idempotency-Key", key);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let bytes = resp.bytes().await.map_err(|e| CliError::Other(format!("{addr}: {e}")))?;
                    if status == StatusCode::SERVICE_UNAVAILABLE {
                        last_503 = Some((status, bytes));
                        failures.push(format!("{addr} (503)"));
                        continue;
                    }
                    return Ok((status, bytes));
                }
                Err(e) => failures.push(format!("{addr} ({})", short_error(&e))),
            }
        }
        if let Some(r) = last_503 {
            return Ok(r);
        }
        Err(CliError::Unreachable(if failures.is_empty() { "no --addr given".into() } else { failures.join(", ") }))
    }

    /// A GET whose body is streamed (logs); the first node that answers serves it.
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response, CliError> {
        let mut failures = Vec::new();
        let client = builder(&self.ca).build().map_err(|e| CliError::Other(e.to_string()))?;
        for addr in &self.addrs {
            match self.request(&client, Method::GET, format!("{addr}{path}")).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => failures.push(format!("{addr} (503)")),
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.bytes().await.unwrap_or_default();
                    return Err(api_error(status, &body));
                }
                Err(e) => failures.push(format!("{addr} ({})", short_error(&e))),
            }
        }
        Err(CliError::Unreachable(failures.join(", ")))
    }

    /// Sends and decodes a JSON answer; an error answer becomes [`CliError::Api`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, CliError> {
        let (status, bytes) = self.send(method, path, body).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let bytes = if bytes.is_empty() { bytes::Bytes::from_static(b"null") } else { bytes };
        serde_json::from_slice(&bytes).map_err(|e| CliError::Other(format!("unexpected answer from the API: {e}")))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned, B: Serialize>(&self, path: &str, body: &B) -> Result<T, CliError> {
        let v = serde_json::to_value(body).map_err(|e| CliError::Other(e.to_string()))?;
        self.call(Method::POST, path, Some(&v)).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), CliError> {
        let (status, bytes) = self.send(Method::DELETE, path, None).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok(())
    }
}

fn short_error(e: &reqwest::Error) -> String {
    // A TLS failure is a connect error too: say which (the certificate is the usual
    // cause: no --ca-cert, or a node whose certificate lacks the address used).
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(tls) = crate::tls::innermost_io(s).downcast_ref::<rustls::Error>() {
            let hint = match tls {
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                    " — give the cluster CA with --ca-cert or BERTH_CA_CERT"
                }
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
                ) => " — the node's certificate lacks this address: berth ca issue --host",
                _ => "",
            };
            return format!("TLS: {tls}{hint}");
        }
        source = s.source();
    }
    if e.is_connect() {
        "connection refused".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        e.to_string()
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> CliError {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<Wrapper>(body) {
        Ok(w) => CliError::Api { status: status.as_u16(), code: w.error.code, message: w.error.message },
        Err(_) => CliError::Api {
            status: status.as_u16(),
            code: status.as_str().to_string(),
            message: String::from_utf8_lossy(body).trim().to_string(),
        },
    }
}

/// Percent-encodes a path segment.
pub fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
